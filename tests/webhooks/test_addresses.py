"""Which addresses webhooks may be sent to."""

import ipaddress

import pytest
from django.test import override_settings

from webhooks.addresses import AddressRefused, allowed, check_url

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
]


@pytest.mark.parametrize("address", REFUSED)
def test_private_loopback_link_local_and_reserved_addresses_are_refused(address):
    assert not allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_public_addresses_are_allowed(address):
    assert allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hooks",
        "https://10.0.0.5/hooks",
        "https://[::1]:8443/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://localhost/hooks",  # a name resolving to loopback
    ],
)
def test_urls_on_private_addresses_are_refused_naming_the_address(url):
    with pytest.raises(AddressRefused, match="public addresses"):
        check_url(url)


@override_settings(WEBHOOKS_ALLOWED_PRIVATE_NETWORKS=["127.0.0.0/8", "::1/128"])
def test_networks_the_operator_allows_may_be_called():
    assert check_url("https://localhost:8443/hooks?a=1").address == "127.0.0.1"
    assert check_url("https://[::1]/x").address == "::1"
    assert check_url("https://[::ffff:127.0.0.1]/x").address == "::ffff:7f00:1"
    with pytest.raises(AddressRefused):
        check_url("https://10.0.0.1/hooks")


def test_the_target_keeps_the_host_for_the_host_header_and_the_path_with_its_query():
    target = check_url("https://93.184.215.14:8443/in/hooks?token=abc")

    assert (target.address, target.port, target.path) == (
        "93.184.215.14",
        8443,
        "/in/hooks?token=abc",
    )
    assert target.host_header == "93.184.215.14:8443"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.215.14/hooks", "https://"),
        ("ftp://93.184.215.14/hooks", "https://"),
        ("https://user:pw@93.184.215.14/hooks", "Credentials"),
        ("https:///hooks", "host"),
        ("https://no-such-host.invalid/hooks", "cannot be resolved"),
    ],
)
def test_other_urls_are_refused_saying_why(url, message):
    with pytest.raises(AddressRefused, match=message):
        check_url(url)


@override_settings(WEBHOOKS_ALLOW_HTTP=True)
def test_plain_http_when_the_operator_allows_it():
    assert check_url("http://93.184.215.14/hooks").port == 80

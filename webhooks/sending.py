"""One POST of a delivery to its receiver, connected to the address that was checked
(webhooks.addresses), with connect and read timeouts, following no redirect.

Over https the receiver's certificate must chain to a CA of certifi's bundle (or of
WEBHOOKS_CA_BUNDLE instead) and name the URL's host, which is also the TLS server name,
although the connection goes to the checked address."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

import certifi
import urllib3
from django.conf import settings
from django.utils import timezone
from urllib3.exceptions import SSLError
from urllib3.util.ssl_match_hostname import CertificateError

from .addresses import Target

# Enough of an answer's body to show in an error; the rest is not read.
BODY_SHOWN = 200


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: float | None  # seconds, when the receiver said
    body: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def post(target: Target, body: bytes, headers: dict[str, str]) -> Answer:
    """POST `body` to `target`; raises urllib3's errors when no answer comes."""
    timeout = urllib3.Timeout(
        connect=settings.WEBHOOKS_CONNECT_TIMEOUT, read=settings.WEBHOOKS_READ_TIMEOUT
    )
    pool = _pool(target, timeout)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header, "User-Agent": "Jobsite-Webhooks/1"},
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
        try:
            shown = response.read(BODY_SHOWN, decode_content=False)
        finally:
            response.release_conn()
        return Answer(
            response.status,
            retry_after(response.headers.get("Retry-After")),
            shown.decode("utf-8", "replace"),
        )
    finally:
        pool.close()


def _pool(target: Target, timeout: urllib3.Timeout) -> urllib3.HTTPConnectionPool:
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_bundle(),
            # The certificate must be the URL's host's, though we connect by address.
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    return urllib3.HTTPConnectionPool(
        target.address, target.port, timeout=timeout, retries=False, maxsize=1
    )


def ca_bundle() -> str:
    """The PEM file of the CAs a receiver's certificate must chain to."""
    return settings.WEBHOOKS_CA_BUNDLE or certifi.where()


def no_answer(exc: Exception, target: Target) -> str:
    """Why no answer came, for the delivery's log: TLS failures said as such."""
    if isinstance(exc, SSLError):
        cause = exc.args[0] if exc.args else exc
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or str(cause)
            return f"TLS error: the certificate of {target.host} could not be verified ({reason})."
        if isinstance(cause, CertificateError):
            return f"TLS error: the certificate is not for {target.host} ({cause})."
        return f"TLS error: the handshake with {target.host} failed ({cause})."
    return f"{type(exc).__name__}: {exc}"


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or timezone.now())).total_seconds())


def elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

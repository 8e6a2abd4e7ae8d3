"""Upload limits: the size limit holds while the body streams in (413 before it is all
read), and images with too many pixels or decompression bombs are refused with 400."""

import http.client
import io
import json
import struct
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.test import Client
from PIL import Image as PILImage

from jobs.models import Job
from notes.models import Image
from tests.support import Api

BOUNDARY = "jobsite-test-boundary"
MB = 1024 * 1024


def png_bytes(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid black-and-white PNG of width x height: all zeros, so it compresses to a
    thousandth of its decoded size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed bits
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def file_part_head(name: str = "big.png") -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()


def open_upload(api: Api, headers: dict[str, str]) -> http.client.HTTPConnection:
    """Start a raw POST to the upload endpoint: headers sent, body still to come."""
    url = urlsplit(api.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=15)
    connection.putrequest("POST", "/api/notes/images/")
    connection.putheader("Authorization", api.session.headers["Authorization"])
    connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    return connection


def stored_files() -> set[Path]:
    return set(Path(django_settings.MEDIA_ROOT).rglob("*.*"))


@pytest.fixture
def nothing_written(db):
    before = stored_files()
    yield
    assert Image.objects.count() == 0 and Job.objects.count() == 0
    assert stored_files() == before, "no file was left in MEDIA_ROOT"


def test_a_body_declaring_more_than_the_limit_is_refused_before_the_rest_is_sent(
    live_api, nothing_written
):
    connection = open_upload(live_api, {"Content-Length": str(30 * MB)})
    connection.send(file_part_head() + b"\0" * (64 * 1024))

    # Only 64 KB of the 30 MB went out: an answer now means the server did not wait for it.
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()

    assert response.status == 413
    assert body["code"] == "request_too_large"
    assert "5,242,880 bytes" in body["detail"]


def test_a_chunked_upload_is_refused_without_reading_it(live_api, settings, nothing_written):
    settings.NOTES_IMAGE_MAX_BYTES = 50_000
    connection = open_upload(live_api, {"Transfer-Encoding": "chunked"})
    data = file_part_head() + b"\0" * (64 * 1024)
    connection.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()

    assert response.status == 411
    assert body["code"] == "length_required"
    assert "Content-Length" in body["detail"] and "50,000 bytes" in body["detail"]


def test_a_file_over_the_limit_is_refused_while_it_streams_in(api, settings, nothing_written):
    # The declared length is within the allowance for the multipart framing; the file
    # part inside it is what passes the limit.
    settings.NOTES_IMAGE_MAX_BYTES = 100_000
    data = png_bytes() + b"\0" * 120_000

    response = api.post("/api/notes/images/", files={"file": ("big.png", data)}, json=None)

    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert "100,000 bytes" in response.json()["detail"]


def test_a_browser_signed_in_to_the_site_is_held_to_the_same_limit(
    live_anonymous_api, user, settings, nothing_written
):
    # A session's CSRF check reads the form before the view runs: the limit is on by then.
    settings.NOTES_IMAGE_MAX_BYTES = 100_000
    browser = Client()
    browser.force_login(user)
    live_anonymous_api.session.cookies.set(
        django_settings.SESSION_COOKIE_NAME,
        browser.cookies[django_settings.SESSION_COOKIE_NAME].value,
    )
    live_anonymous_api.get("/accounts/login/")
    token = live_anonymous_api.session.cookies[django_settings.CSRF_COOKIE_NAME]

    response = live_anonymous_api.post(
        "/api/notes/images/",
        files={"file": ("big.png", png_bytes() + b"\0" * 120_000)},
        json=None,
        headers={"X-CSRFToken": token},
    )

    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"


def test_an_image_of_exactly_the_limit_is_accepted(api, settings):
    data = png_bytes()
    settings.NOTES_IMAGE_MAX_BYTES = len(data)

    response = api.post("/api/notes/images/", files={"file": ("cat.png", data)}, json=None)

    assert response.status_code == 202, response.text
    assert Image.objects.get().size == len(data)


def test_a_small_png_claiming_144_megapixels_is_refused(api, nothing_written):
    data = png_claiming(12_000, 12_000)
    assert len(data) < 64 * 1024

    response = api.post("/api/notes/images/", files={"file": ("huge.png", data)}, json=None)

    assert response.status_code == 400
    assert "the limit is 40,000,000 pixels" in response.json()["errors"]["file"][0]


def test_a_decompression_bomb_is_a_400_not_a_500(api, nothing_written):
    # 900 megapixels, 112 MB once decompressed: Pillow calls this a bomb and refuses it.
    data = png_claiming(30_000, 30_000)

    response = api.post("/api/notes/images/", files={"file": ("bomb.png", data)}, json=None)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "the limit is 40,000,000 pixels" in response.json()["errors"]["file"][0]


def test_the_pixel_limit_is_a_setting_and_names_the_size(api, settings, nothing_written):
    settings.NOTES_IMAGE_MAX_PIXELS = 1000

    response = api.post(
        "/api/notes/images/", files={"file": ("cat.png", png_bytes((40, 30)))}, json=None
    )

    assert response.status_code == 400
    message = response.json()["errors"]["file"][0]
    assert "40x30" in message and "the limit is 1,000 pixels" in message

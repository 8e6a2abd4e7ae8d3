"""Who may see an image: only its owner, signed in (JWT or session), through
/api/notes/images/<id>/content/: the bytes from storage, or a redirect to a signed
Cloudinary URL that expires. No public media URL serves them."""

import importlib
import io
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from cloudinary.utils import api_sign_request
from django.conf import settings as django_settings
from django.test import Client, override_settings
from django.urls import Resolver404, URLResolver
from django.urls.resolvers import RegexPattern
from PIL import Image as PILImage

from notes import services
from notes.models import Image, ImageStatus

API_KEY, API_SECRET, CLOUD = "123456789", "s3cr3t", "demo"


def png_bytes(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (30, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def uploaded(api) -> dict:
    """An image the owner uploaded, kept in storage (its upload job not run yet)."""
    response = api.post("/api/notes/images/", files={"file": ("leaf.png", png_bytes())}, json=None)
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture
def on_cloudinary(user, httpserver, monkeypatch) -> Image:
    """An image of the owner's kept on Cloudinary (a local stand-in) as an authenticated asset."""
    prefix = httpserver.url_for("").rstrip("/")
    monkeypatch.setenv(
        "CLOUDINARY_URL", f"cloudinary://{API_KEY}:{API_SECRET}@{CLOUD}?upload_prefix={prefix}"
    )
    return Image.objects.create(
        owner=user,
        status=ImageStatus.STORED,
        backend="cloudinary",
        public_id="jobsite/Wq3xN0cD6mRfVb1tYh8LkP2sZa9eUj4G",
        content_type="image/png",
        size=len(png_bytes()),
    )


def test_the_owner_gets_the_exact_bytes_inline_and_private(api, uploaded):
    response = api.get(f"/api/notes/images/{uploaded['id']}/content/")

    assert response.status_code == 200
    assert response.content == png_bytes()
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"] == "inline"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "private" in response.headers["Cache-Control"]
    assert uploaded["url"] == f"/api/notes/images/{uploaded['id']}/content/"


def test_another_user_gets_404_and_anonymous_401(api, other_api, anonymous_api, uploaded):
    path = f"/api/notes/images/{uploaded['id']}/content/"

    assert other_api.get(path).status_code == 404
    assert anonymous_api.get(path).status_code == 401
    assert other_api.get(f"/api/notes/images/{uploaded['id']}/").status_code == 404


def test_the_owner_signed_in_to_the_site_sees_it_too(user, uploaded):
    browser = Client()
    browser.force_login(user)

    response = browser.get(uploaded["url"])

    assert response.status_code == 200
    assert response.getvalue() == png_bytes()


def test_the_stored_file_is_not_served_from_the_media_url(uploaded, user):
    # Through the site's own request handling: the test live server serves MEDIA_ROOT
    # itself, which no deployed server does.
    path = f"{django_settings.MEDIA_URL}{Image.objects.get(id=uploaded['id']).file.name}"
    signed_in = Client()
    signed_in.force_login(user)

    assert Client().get(path).status_code == 404
    assert signed_in.get(path).status_code == 404


def test_no_media_route_exists_even_in_debug(db):
    import jobsite.urls

    try:
        with override_settings(DEBUG=True, CLOUDINARY_URL=""):
            urls = importlib.reload(jobsite.urls)
            resolver = URLResolver(RegexPattern(r"^/"), urls)
            with pytest.raises(Resolver404):
                resolver.resolve(f"{django_settings.MEDIA_URL}notes/images/2026/01/x.png")
    finally:
        importlib.reload(jobsite.urls)


def test_an_image_whose_file_is_gone_is_404(api, uploaded):
    image = Image.objects.get(id=uploaded["id"])
    image.file.storage.delete(image.file.name)

    assert api.get(uploaded["url"]).status_code == 404


def test_a_cloudinary_image_redirects_the_owner_to_a_signed_url_that_expires(
    api, other_api, anonymous_api, on_cloudinary, httpserver
):
    path = f"/api/notes/images/{on_cloudinary.id}/content/"

    response = api.get(path, allow_redirects=False)

    assert response.status_code == 302
    assert "no-store" in response.headers["Cache-Control"]
    location = urlsplit(response.headers["Location"])
    assert location.path == f"/v1_1/{CLOUD}/image/download"
    params = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert params["public_id"] == on_cloudinary.public_id
    assert (params["type"], params["format"]) == ("authenticated", "png")
    assert 0 < int(params["expires_at"]) - time.time() <= 300
    signed = {k: v for k, v in params.items() if k not in ("api_key", "signature")}
    assert params["signature"] == api_sign_request(signed, API_SECRET)
    assert other_api.get(path, allow_redirects=False).status_code == 404
    assert anonymous_api.get(path, allow_redirects=False).status_code == 401


def test_image_content_downloads_a_cloudinary_image_through_a_signed_url(on_cloudinary, httpserver):
    httpserver.expect_request(f"/v1_1/{CLOUD}/image/download").respond_with_data(
        png_bytes(), content_type="image/png"
    )

    data, content_type = services.image_content(on_cloudinary)

    assert (data, content_type) == (png_bytes(), "image/png")
    [(request, _)] = httpserver.log
    assert request.args["public_id"] == on_cloudinary.public_id
    assert request.args["type"] == "authenticated"
    assert int(request.args["expires_at"]) - time.time() <= 60


def test_image_content_reads_an_image_in_storage(api, uploaded):
    image = Image.objects.get(id=uploaded["id"])

    assert services.image_content(image) == (png_bytes(), "image/png")

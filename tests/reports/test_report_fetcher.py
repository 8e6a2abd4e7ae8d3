"""The URL fetcher of a report, on its own: `data:` URLs and the owner's stored images are
loaded, every other URL is refused without any request or file read, and a refusal only
leaves the resource out of the PDF, even when the HTML was never cleaned."""

import io

import pytest
from django.conf import settings
from django.utils.safestring import mark_safe
from PIL import Image as PILImage
from pypdf import PdfReader

from notes.models import ImageStatus
from reports.fetcher import RefusedURL, ReportFetcher
from reports.models import Kind, Report
from reports.services import render_pdf
from tests.reports.images import (
    BLUE,
    CYAN,
    GREEN,
    RED,
    colours_of_images,
    data_url,
    png,
    stored_image,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-FILE-CONTENT")
    return path


def test_data_urls_are_loaded():
    fetcher = ReportFetcher(owner_id=None)

    image = fetcher.fetch(data_url(png(RED)))
    text = fetcher.fetch("data:text/plain,hello")

    assert (image.read(), image.content_type) == (png(RED), "image/png")
    assert (text.read(), text.content_type) == (b"hello", "text/plain")


def test_the_owners_stored_images_are_loaded_by_each_name_they_go_by(user):
    image = stored_image(user, GREEN)
    site = settings.SITE_URL.rstrip("/")
    fetcher = ReportFetcher(owner_id=user.id)

    for url in [
        f"image:{image.id}",
        f"/api/notes/images/{image.id}/",
        f"/api/notes/images/{image.id}/content/",
        f"{site}/api/notes/images/{image.id}/content/",
        image.url,
    ]:
        response = fetcher.fetch(url)
        assert (response.read(), response.content_type) == (png(GREEN), "image/png"), url


def test_everything_else_is_refused_without_a_request_or_a_file_read(
    user, other_user, httpserver, secret_file
):
    mine = stored_image(user, GREEN)
    theirs = stored_image(other_user, BLUE)
    pending = stored_image(user, RED, status=ImageStatus.PENDING)
    site = settings.SITE_URL.rstrip("/")
    fetcher = ReportFetcher(owner_id=user.id)

    for url in [
        f"file://{secret_file}",
        "file:///etc/passwd",
        httpserver.url_for("/image.png"),
        f"https://127.0.0.1:{httpserver.port}/image.png",
        f"ftp://127.0.0.1:{httpserver.port}/image.png",
        str(secret_file),
        "/etc/passwd",
        "../../../etc/passwd",
        "notes/images/1.png",
        "",
        # another user's image, by every name
        f"image:{theirs.id}",
        f"/api/notes/images/{theirs.id}/content/",
        f"{site}/api/notes/images/{theirs.id}/",
        theirs.url,
        # not stored yet
        f"image:{pending.id}",
        # path tricks around the owner's own image
        f"/api/notes/images/{mine.id}/../{theirs.id}/content/",
        f"/api/notes/images/{mine.id}/content/../../{theirs.id}/content/",
        f"/api/notes/images/{theirs.id}%2F..%2F{mine.id}/content/",
        f"/api/notes/images/{mine.id}%2Fcontent/",
        f"/api/notes/images/{mine.id}/content/extra",
        f"/api/notes/images/{mine.id}/content\\..\\",
        f"/api/notes/images/+{mine.id}/",
        f"/api/notes/images/{mine.id} /",
        f"//evil.example/api/notes/images/{mine.id}/content/",
        f"http://evil.example/api/notes/images/{mine.id}/content/",
        f"{site}@evil.example/api/notes/images/{mine.id}/content/",
        f"{httpserver.url_for('')}api/notes/images/{mine.id}/content/",
        f"image:{mine.id}/../{theirs.id}",
        f"image: {mine.id}",
        f"image:{mine.id}x",
        "image:\u0661",  # an Arabic-Indic digit one
        f"javascript:/api/notes/images/{mine.id}/",
        f"{mine.url}/../{theirs.id}.png",
    ]:
        with pytest.raises(RefusedURL):
            fetcher.fetch(url)
    assert httpserver.log == []


def test_images_above_the_pixel_limit_are_refused():
    buffer = io.BytesIO()
    PILImage.new("1", (10_000, 6_000)).save(buffer, format="PNG")  # 60 megapixels, small file

    with pytest.raises(RefusedURL):
        ReportFetcher(owner_id=None).fetch(data_url(buffer.getvalue()))


def test_without_an_owner_only_data_urls_are_loaded(user):
    image = stored_image(user, GREEN)

    with pytest.raises(RefusedURL):
        ReportFetcher(owner_id=None).fetch(f"image:{image.id}")


def test_raw_hostile_html_renders_without_fetching_anything(
    user, other_user, httpserver, secret_file
):
    mine, theirs = stored_image(user, GREEN), stored_image(other_user, CYAN)
    url = httpserver.url_for("")
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="20" height="20"><image href="{url}svg" xlink:href="file://{secret_file}" '
        'width="20" height="20"/></svg>'
    )
    hostile = f"""<p>Visible start.</p>
<img src="file://{secret_file}"> <img src="{url}img"> <img src="image:{theirs.id}">
<img src="image:{mine.id}"> <img src="{data_url(png(RED))}">
<link rel="attachment" href="{url}a"> <link rel="attachment" href="file://{secret_file}">
<link rel="stylesheet" href="{url}stylesheet">
<iframe src="{url}iframe"></iframe> <object data="{url}object"></object>
<object data="file://{secret_file}"></object> <embed src="{url}embed">
<p style="background: url({url}style-attribute)">Styled.</p>
<style>@import url("{url}import"); @font-face {{ font-family: x; src: url({url}font); }}
  body {{ background: url({url}style-tag); font-family: x; }}</style>
{svg}
<img src="{data_url(svg.encode(), "image/svg+xml")}"> <img src="{data_url(svg.encode())}">
<p>Visible end.</p>"""
    page = {"title": "Raw", "updated_at": None, "words": 2, "html": mark_safe(hostile)}

    pdf, pages = render_pdf(
        "reports/pdf/notes_export.html",
        {
            "report": Report(owner=user, kind=Kind.NOTES_EXPORT, title="Raw"),
            "pages": [page],
            "page_total": 1,
            "word_total": 2,
        },
        user.id,
    )

    assert pages == 1
    assert httpserver.log == []
    reader = PdfReader(io.BytesIO(pdf))
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert "Visible start." in text and "Visible end." in text
    assert "TOP-SECRET" not in text
    assert reader.attachments == {}
    assert colours_of_images(reader) == {GREEN, RED}

"""Notes exports render images from `data:` URLs and the owner's own uploads, and nothing
else: hostile pages fetch no URL and read no file, and the report still becomes ready.
The uploads' and the reports' jobs run in the test process."""

import io

from django.conf import settings
from pypdf import PdfReader

from notes.models import Page
from tests.engine import run
from tests.reports.images import BLUE, CYAN, GREEN, RED, YELLOW, colours_of_images, data_url, png
from tests.reports.test_reports_api import run_report


def uploaded_image(api, content: bytes) -> dict:
    """An image uploaded through the images API and stored by its job."""
    created = api.post("/api/notes/images/", files={"file": ("pic.png", content)}, json=None)
    assert created.status_code == 202, created.text
    assert run(created.json()["job_id"]) == "succeeded"
    seen = api.get(f"/api/notes/images/{created.json()['id']}/").json()
    assert seen["status"] == "stored", seen["error"]
    return seen


def export(api) -> tuple[dict, PdfReader]:
    created = api.post("/api/reports/", {"kind": "notes_export"}).json()
    run_report(created["id"])
    report = api.get(f"/api/reports/{created['id']}/").json()
    assert report["status"] == "succeeded", report["error"]
    download = api.get(f"/api/reports/{created['id']}/download/")
    return report, PdfReader(io.BytesIO(download.content))


def text_of(reader: PdfReader) -> str:
    return "\n".join(page.extract_text() for page in reader.pages)


def test_a_data_url_image_is_in_the_pdf(api, user):
    Page.objects.create(
        owner=user, title="Inline", content=f"Before\n\n![dot]({data_url(png(RED))})"
    )

    _, reader = export(api)

    assert colours_of_images(reader) == {RED}


def test_the_owners_uploaded_images_are_in_the_pdf_and_another_users_are_not(api, other_api, user):
    by_reference = uploaded_image(api, png(RED))
    by_api_path = uploaded_image(api, png(GREEN))
    by_site_url = uploaded_image(api, png(BLUE))
    by_own_url = uploaded_image(api, png(YELLOW))
    theirs = uploaded_image(other_api, png(CYAN))
    site = settings.SITE_URL.rstrip("/")
    content = f"""Images of the owner, and someone else's.

![a](image:{by_reference["id"]})
![b](/api/notes/images/{by_api_path["id"]}/content/)
![c]({site}/api/notes/images/{by_site_url["id"]}/)
![d]({by_own_url["url"]})

![e](image:{theirs["id"]}) ![f](/api/notes/images/{theirs["id"]}/content/) ![g]({theirs["url"]})
"""
    Page.objects.create(owner=user, title="Images", content=content)

    _, reader = export(api)

    assert colours_of_images(reader) == {RED, GREEN, BLUE, YELLOW}


def test_a_hostile_page_fetches_nothing_and_the_report_is_still_ready(api, user, httpserver):
    url = httpserver.url_for("")
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="20" height="20"><image href="{url}svg" xlink:href="{url}svg-xlink" '
        'width="20" height="20"/></svg>'
    )
    hostile = f"""Visible start.

![passwd](file:///etc/passwd) [passwd link](file:///etc/passwd)

![listener]({url}markdown-image) <img src="http://127.0.0.1:{httpserver.port}/img">

<link rel="attachment" href="{url}a"> <link rel="attachment" href="file:///etc/passwd">
<link rel="stylesheet" href="{url}stylesheet">
<iframe src="{url}iframe"></iframe> <iframe src="file:///etc/passwd"></iframe>
<object data="{url}object"></object> <object data="file:///etc/passwd"></object>
<embed src="{url}embed"> <embed src="file:///etc/passwd">
<p style="background: url({url}style-attribute)">Styled paragraph.</p>
<style>@import url("{url}import"); body {{ background: url({url}style-tag); }}</style>

{svg}

![svg as data]({data_url(svg.encode(), "image/svg+xml")})
<img src="{data_url(svg.encode(), "image/svg+xml")}"> <img src="{data_url(svg.encode())}">

<a href="javascript:fetch('{url}js')">script link</a>

Visible end.
"""
    Page.objects.create(owner=user, title="Hostile", content=hostile)

    report, reader = export(api)

    assert report["status"] == "succeeded"
    assert httpserver.log == []
    text = text_of(reader)
    assert "Visible start." in text and "Visible end." in text
    assert "root:" not in text
    assert reader.attachments == {}
    assert colours_of_images(reader) == set()

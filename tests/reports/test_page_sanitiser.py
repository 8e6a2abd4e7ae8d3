"""Page markdown becomes HTML with only allowed tags and attributes before a report
template sees it; the templates escape every other piece of user text."""

import io

import pytest
from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString
from PIL import Image as PILImage

from reports.models import Kind, Report
from reports.sanitize import clean_html, owner_images, page_html
from tests.reports.images import BLUE, GREEN, data_url, png, stored_image


def test_text_formatting_survives():
    html = page_html(
        "# Title\n\n## Part\n\nSome **bold**, *italic* and `code`.\n\n"
        "* one\n* two\n\nThen:\n\n1. first\n\n> quoted\n\n```\nblock\n```\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n"
    )

    assert isinstance(html, SafeString)
    for fragment in [
        "<h1>Title</h1>",
        "<h2>Part</h2>",
        "<strong>bold</strong>",
        "<em>italic</em>",
        "<code>code</code>",
        "<ul>",
        "<li>one</li>",
        "<ol>",
        "<blockquote>",
        "<pre><code>block",
        "<table>",
        "<td>1</td>",
    ]:
        assert fragment in html, fragment


@pytest.mark.parametrize(
    "dangerous, left_over",
    [
        ("<script>alert(1)</script>", "alert"),
        ("<style>@import url(http://x/)</style>", "@import"),
        ('<link rel="attachment" href="http://x/a">', "<link"),
        ('<link rel="stylesheet" href="http://x/s">', "<link"),
        ('<iframe src="http://x/"></iframe>', "<iframe"),
        ('<object data="http://x/"></object>', "<object"),
        ('<embed src="http://x/">', "<embed"),
        ('<svg><image href="http://x/svg"/></svg>', "http://x"),
        ("<math><mi>x</mi></math>", "<math"),
        ('<form action="http://x/"><input name="a"></form>', "<form"),
        ('<base href="http://x/">', "<base"),
        ('<meta http-equiv="refresh" content="0;url=http://x/">', "<meta"),
        ('<p style="background: url(http://x/)">text</p>', "style"),
        ('<p onclick="alert(1)">text</p>', "onclick"),
        ('<p class="figure" id="x">text</p>', "class"),
        ('<video poster="http://x/p" src="http://x/v"></video>', "http://x"),
        ('<img srcset="http://x/1 1x" src="http://x/2">', "http://x"),
        ('<a href="javascript:alert(1)">link</a>', "javascript"),
        ('<a href=" javascript:alert(1)">link</a>', "javascript"),
        ('<a href="data:text/html,hi">link</a>', "data:"),
        ('<a href="file:///etc/passwd">link</a>', "file:"),
        ('<a href="/relative">link</a>', "href"),
        ('<img src="file:///etc/passwd" alt="pw">', "file:"),
        ('<img src="http://127.0.0.1:8000/x.png">', "127.0.0.1"),
        ('<img src="/media/notes/images/1.png">', "/media"),
        ('<img src="data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=">', "svg"),
        ('<img src="data:text/html,<b>hi</b>">', "data:"),
        ("<!-- <img src=http://x/> -->", "http://x"),
    ],
)
def test_dangerous_markup_is_removed(dangerous, left_over):
    html = clean_html(f"<p>before</p>{dangerous}<p>after</p>")

    assert left_over not in html
    assert "<p>before</p>" in html and "<p>after</p>" in html


def test_links_keep_http_https_and_mailto():
    html = page_html(
        "[a](https://example.com/x) [b](http://example.com) [c](mailto:me@example.com)"
    )

    assert '<a href="https://example.com/x">a</a>' in html
    assert '<a href="http://example.com">b</a>' in html
    assert '<a href="mailto:me@example.com">c</a>' in html


def test_images_keep_raster_data_urls_with_alt_and_title():
    source = data_url(png(GREEN))

    html = page_html(f'![a green dot]({source} "Green")')

    assert f'<img alt="a green dot" src="{source}" title="Green">' in html


def test_images_that_are_not_what_they_claim_or_too_large_lose_their_source():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><image href="http://x/"/></svg>'
    buffer = io.BytesIO()
    PILImage.new("1", (10_000, 6_000)).save(buffer, format="PNG")  # 60 megapixels, small file

    for source in [
        data_url(svg, "image/png"),
        data_url(b"not an image"),
        "data:image/png;base64,%%%",
        data_url(buffer.getvalue()),
    ]:
        assert "src=" not in page_html(f"![x]({source})"), source[:40]


@pytest.mark.django_db
def test_the_owners_images_are_inlined_and_other_images_lose_their_source(user, other_user):
    mine, theirs = stored_image(user, GREEN), stored_image(other_user, BLUE)
    site = settings.SITE_URL.rstrip("/")
    inlined = f'src="{data_url(png(GREEN))}"'

    html = page_html(
        f"![a](image:{mine.id}) ![b](/api/notes/images/{mine.id}/content/) "
        f"![c]({site}/api/notes/images/{mine.id}/) ![d]({mine.url}) "
        f"![e](image:{theirs.id}) ![f]({theirs.url}) "
        f"![g](/api/notes/images/{mine.id}/../{theirs.id}/content/)",
        owner_images(user.id),
    )

    assert html.count(inlined) == 4
    assert html.count("<img") == 7
    assert html.count("src=") == 4


def test_user_text_in_the_pdf_templates_is_escaped(user):
    hostile = '<img src="http://x/t"> </style> "quoted" \\ @import url(http://x/)'
    report = Report(owner=user, kind=Kind.NOTES_EXPORT, title=hostile)
    page = {"title": hostile, "updated_at": timezone.now(), "words": 1, "html": page_html("ok")}

    html = render_to_string(
        "reports/pdf/notes_export.html",
        {"report": report, "pages": [page], "page_total": 1, "word_total": 1},
    )

    assert "<img" not in html
    assert html.count("&lt;img src=&quot;http://x/t&quot;&gt;") == 3  # <title>, <h1>, <h2>
    style = html[html.index("<style>") : html.index("</style>")]
    assert "http://x" not in style

"""Page markdown as HTML for reports, cleaned with an allow-list before a template sees it.

Images keep a source only if it is a raster `data:` URL or names one of the report owner's
stored images, which is then inlined as a `data:` URL; links keep http, https and mailto."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import markdown
import nh3
from django.utils.safestring import SafeString, mark_safe

from notes.services import report_image

ImageSource = Callable[[str], str | None]

ALLOWED_TAGS = {
    *("p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6"),
    *("strong", "b", "em", "i", "u", "s", "del", "ins", "mark", "sub", "sup", "small"),
    *("abbr", "code", "pre", "kbd", "samp", "blockquote"),
    *("ul", "ol", "li", "dl", "dt", "dd"),
    *("table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td"),
    *("a", "img"),
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "abbr": {"title"},
    "ol": {"start"},
    "th": {"colspan", "rowspan"},
    "td": {"colspan", "rowspan"},
}
# Dropped with everything inside them, not just unwrapped.
DROPPED_WITH_CONTENT = {
    *("script", "style", "svg", "math", "iframe", "object", "noscript", "template"),
    *("textarea", "select", "title"),
}
# Schemes that reach the attribute filter below, which decides per tag.
CANDIDATE_SCHEMES = {"http", "https", "mailto", "data", "image"}
LINK = re.compile(r"(?:https?|mailto):", re.IGNORECASE)
RASTER_DATA_URL = re.compile(r"data:image/(?:png|jpeg|gif|webp)[;,]", re.IGNORECASE)
RASTER_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


def data_images_only(src: str) -> str | None:
    return src if RASTER_DATA_URL.match(src) else None


def clean_html(html: str, image_source: ImageSource = data_images_only) -> SafeString:
    """`html` with only the allowed tags and attributes; `image_source` maps each image
    source to the one to keep, or None to drop it."""

    def filter_attribute(tag: str, attribute: str, value: str) -> str | None:
        if tag == "a" and attribute == "href":
            return value if LINK.match(value) else None
        if tag == "img" and attribute == "src":
            return image_source(value)
        return value

    cleaned = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        clean_content_tags=DROPPED_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=CANDIDATE_SCHEMES,
        attribute_filter=filter_attribute,
        link_rel=None,
        strip_comments=True,
    )
    return mark_safe(cleaned)  # cleaned with the allow-list above


def page_html(content: str, image_source: ImageSource = data_images_only) -> SafeString:
    return clean_html(
        markdown.markdown(content, extensions=["extra"], output_format="html"), image_source
    )


def owner_images(owner_id: int) -> ImageSource:
    """An image source for one report: raster `data:` URLs, and the owner's stored images
    inlined as `data:` URLs (each read once)."""
    inlined: dict[str, str | None] = {}

    def source(src: str) -> str | None:
        if RASTER_DATA_URL.match(src):
            return src
        if src not in inlined:
            inlined[src] = _as_data_url(report_image(owner_id, src))
        return inlined[src]

    return source


def _as_data_url(found: tuple[bytes, str] | None) -> str | None:
    if found is None or found[1] not in RASTER_TYPES:
        return None
    content, content_type = found
    return f"data:{content_type};base64,{base64.b64encode(content).decode('ascii')}"

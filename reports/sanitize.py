"""Page markdown as HTML for reports, cleaned with an allow-list before a template sees it.

Images keep a source only if it is a `data:` URL of a raster image of a sane size, or names
one of the report owner's stored images, which is then inlined as a `data:` URL. Links keep
http, https and mailto."""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import markdown
import nh3
from django.conf import settings
from django.utils.safestring import SafeString, mark_safe
from PIL import Image as PILImage

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
RASTER_FORMATS = {"PNG", "JPEG", "GIF", "WEBP"}


def data_images_only(src: str) -> str | None:
    """`src` if it is a `data:` URL of a raster image of a sane size, else None."""
    if not RASTER_DATA_URL.match(src):
        return None
    return src if _is_sane_raster(_data_url_bytes(src)) else None


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
            return data_images_only(src)
        if src not in inlined:
            inlined[src] = _as_data_url(report_image(owner_id, src))
        return inlined[src]

    return source


def _as_data_url(found: tuple[bytes, str] | None) -> str | None:
    if found is None or found[1] not in RASTER_TYPES or not _is_sane_raster(found[0]):
        return None
    content, content_type = found
    return f"data:{content_type};base64,{base64.b64encode(content).decode('ascii')}"


def _data_url_bytes(src: str) -> bytes:
    header, _, payload = src.partition(",")
    try:
        if header.lower().endswith(";base64"):
            return base64.b64decode(payload)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return b""


def _is_sane_raster(content: bytes) -> bool:
    """Whether the bytes are a PNG, JPEG, GIF or WebP image of at most NOTES_IMAGE_MAX_PIXELS
    (read from its header: nothing is decoded)."""
    try:
        with PILImage.open(io.BytesIO(content)) as image:
            kind = image.format
    except Exception:  # Pillow raises many kinds of errors on hostile input
        return False
    return kind in RASTER_FORMATS and not too_many_pixels(content)


def too_many_pixels(content: bytes) -> bool:
    """Whether the bytes are an image (of any format Pillow reads) above the pixel limit of
    uploads, NOTES_IMAGE_MAX_PIXELS: a small image may claim a huge size, and decoding it
    would take the worker's memory."""
    try:
        with PILImage.open(io.BytesIO(content)) as image:
            width, height = image.size
    except PILImage.DecompressionBombError:
        return True
    except Exception:  # not an image Pillow reads
        return False
    return width * height > settings.NOTES_IMAGE_MAX_PIXELS

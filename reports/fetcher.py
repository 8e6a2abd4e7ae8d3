"""What WeasyPrint may load while it renders a report: `data:` URLs and the report owner's
own stored images, nothing else, and no image above the pixel limit. No network, no files:
pages hold URLs of any kind."""

from __future__ import annotations

from urllib.request import DataHandler, Request

from weasyprint.urls import URLFetcher, URLFetcherResponse

from notes.services import report_image

from .sanitize import too_many_pixels


class RefusedURL(ValueError):
    """WeasyPrint logs it and renders on without the resource."""


class ReportFetcher(URLFetcher):
    """The URL fetcher of one report, knowing whose images it may show."""

    def __init__(self, owner_id: int | None):
        super().__init__(allowed_protocols=("data",), allow_redirects=False)
        self.owner_id = owner_id

    def fetch(self, url: str, headers: dict | None = None) -> URLFetcherResponse:
        if url[:5].lower() == "data:":
            content, content_type = _decode_data_url(url)
        else:
            content, content_type = self._owner_image(url)
        if too_many_pixels(content):
            raise RefusedURL(f"Reports do not draw images this large: {url[:80]}")
        return URLFetcherResponse(url, content, {"Content-Type": content_type})

    def _owner_image(self, url: str) -> tuple[bytes, str]:
        found = report_image(self.owner_id, url) if self.owner_id is not None else None
        if found is None:
            raise RefusedURL(f"Reports do not fetch {url[:80]}")
        return found


def _decode_data_url(url: str) -> tuple[bytes, str]:
    decoded = DataHandler().data_open(Request(url))
    return decoded.read(), decoded.headers["Content-Type"]

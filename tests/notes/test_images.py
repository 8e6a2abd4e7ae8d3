"""Image uploads: checked by content, stored by a job on Cloudinary (through the real SDK
against a local stand-in server) or in Django storage, under names nobody can guess.
Size and pixel limits: test_upload_limits.py; who may see an image: test_image_access.py."""

import io
import json
import re
from urllib.parse import parse_qs

import pytest
from cloudinary.utils import api_sign_request
from PIL import Image as PILImage
from werkzeug import Response

from jobs.models import Job
from notes.models import Image
from tests.support import wait_for

API_KEY, API_SECRET, CLOUD = "123456789", "s3cr3t", "demo"


def image_bytes(kind: str = "PNG", size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (200, 30, 30)).save(buffer, format=kind)
    return buffer.getvalue()


def upload(api, data: bytes, name: str = "cat.png"):
    return api.post("/api/notes/images/", files={"file": (name, data)}, json=None)


def wait_until_settled(api, image_id: int, timeout: float = 60) -> dict:
    seen: dict = {}

    def settled() -> bool:
        seen.update(api.get(f"/api/notes/images/{image_id}/").json())
        return seen["status"] != "pending"

    wait_for(settled, timeout=timeout, what=f"image {image_id} to be stored or failed")
    return seen


@pytest.fixture
def cloudinary_url(httpserver) -> str:
    prefix = httpserver.url_for("").rstrip("/")
    return f"cloudinary://{API_KEY}:{API_SECRET}@{CLOUD}?upload_prefix={prefix}"


def form_of(request) -> dict[str, str]:
    if request.form:
        return {k: v for k, v in request.form.items()}
    return {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}


def assert_signed(params: dict[str, str]) -> None:
    signed = {
        k: v
        for k, v in params.items()
        if k not in ("file", "api_key", "signature", "signature_algorithm", "resource_type")
    }
    assert params["api_key"] == API_KEY
    assert params["signature"] == api_sign_request(signed, API_SECRET)


def test_an_upload_is_stored_in_django_storage_without_cloudinary(api, user, worker):
    response = upload(api, image_bytes("PNG", (40, 30)))

    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "pending"
    assert Job.objects.get(id=created["job_id"]).queue == "images"
    image = wait_until_settled(api, created["id"])
    assert image["status"] == "stored", image["error"]
    assert (image["backend"], image["width"], image["height"]) == ("storage", 40, 30)
    assert image["content_type"] == "image/png"
    stored = Image.objects.get(id=created["id"])
    assert stored.file.read() == image_bytes("PNG", (40, 30))
    assert re.fullmatch(r"notes/images/\d{4}/\d{2}/[\w-]{32}\.png", stored.file.name)
    assert image["url"] == f"/api/notes/images/{created['id']}/content/"
    assert api.get(image["url"]).content == image_bytes("PNG", (40, 30))


def test_an_upload_goes_to_cloudinary_through_its_sdk(
    api, user, start_worker, httpserver, cloudinary_url, monkeypatch
):
    def accept_upload(request):
        public_id = form_of(request)["public_id"]
        return Response(
            json.dumps(
                {
                    "public_id": public_id,
                    "type": "authenticated",
                    "secure_url": f"https://res.cloudinary.com/demo/image/authenticated/s--x--/{public_id}.jpg",
                    "width": 64,
                    "height": 48,
                }
            ),
            content_type="application/json",
        )

    httpserver.expect_request(f"/v1_1/{CLOUD}/image/upload", method="POST").respond_with_handler(
        accept_upload
    )
    start_worker(env={"CLOUDINARY_URL": cloudinary_url})

    created = upload(api, image_bytes("JPEG", (64, 48)), "photo.jpg").json()
    image = wait_until_settled(api, created["id"])

    assert image["status"] == "stored", image["error"]
    assert image["backend"] == "cloudinary"
    [(request, _)] = httpserver.log
    params = form_of(request)
    assert re.fullmatch(r"jobsite/[\w-]{32}", params["public_id"]), "a random public id"
    assert params["type"] == "authenticated", "delivered only through signed URLs"
    assert image["public_id"] == params["public_id"]
    assert image["url"] == f"/api/notes/images/{created['id']}/content/"
    assert_signed(params)
    assert "file" in request.files or "file" in params
    assert not Image.objects.get(id=created["id"]).file, "the staged copy is gone"
    monkeypatch.setenv("CLOUDINARY_URL", cloudinary_url)
    shown = api.get(image["url"], allow_redirects=False)
    assert shown.status_code == 302
    assert shown.headers["Location"].startswith(httpserver.url_for(f"/v1_1/{CLOUD}/image/download"))

    httpserver.expect_request(f"/v1_1/{CLOUD}/image/destroy", method="POST").respond_with_json(
        {"result": "ok"}
    )
    assert api.delete(f"/api/notes/images/{created['id']}/").status_code == 204
    destroy = form_of(httpserver.log[-1][0])
    assert (destroy["public_id"], destroy["type"]) == (params["public_id"], "authenticated")
    assert_signed(destroy)
    assert not Image.objects.filter(id=created["id"]).exists()


def test_a_failing_cloudinary_is_retried_then_the_image_fails_with_the_reason(
    api, start_worker, httpserver, cloudinary_url, monkeypatch
):
    httpserver.expect_request(f"/v1_1/{CLOUD}/image/upload", method="POST").respond_with_response(
        Response(
            json.dumps({"error": {"message": "Storage is on fire"}}),
            status=500,
            content_type="application/json",
        )
    )
    start_worker(env={"CLOUDINARY_URL": cloudinary_url})

    created = upload(api, image_bytes()).json()
    image = wait_until_settled(api, created["id"], timeout=90)

    assert image["status"] == "failed"
    assert "Storage is on fire" in image["error"]
    job = Job.objects.get(id=created["job_id"])
    assert (job.status, job.attempts) == ("failed", 3)
    assert len(httpserver.log) == 3
    public_ids = {form_of(request)["public_id"] for request, _ in httpserver.log}
    assert len(public_ids) == 1, "each retry overwrites the same asset"
    retries = list(job.events.filter(kind="retry_scheduled").order_by("created_at"))
    assert len(retries) == 2
    assert "5" in retries[0].message and "10" in retries[1].message

    # Deleting the failed image also deletes whatever of it may have reached Cloudinary.
    httpserver.expect_request(f"/v1_1/{CLOUD}/image/destroy", method="POST").respond_with_json(
        {"result": "not found"}
    )
    monkeypatch.setenv("CLOUDINARY_URL", cloudinary_url)
    assert api.delete(f"/api/notes/images/{created['id']}/").status_code == 204
    assert form_of(httpserver.log[-1][0])["public_id"] == public_ids.pop()


@pytest.mark.parametrize(
    "name, data, words",
    [
        ("notes.png", b"just some text, not an image", "not an image we accept"),
        ("pic.bmp", image_bytes("BMP"), "BMP images are not accepted"),
        ("empty.png", b"", "empty"),
    ],
)
def test_uploads_are_checked_by_their_content_not_their_name(api, name, data, words):
    response = upload(api, data, name)

    assert response.status_code == 400
    assert words in response.json()["errors"]["file"][0]
    assert Image.objects.count() == 0 and Job.objects.count() == 0


def test_an_upload_without_a_file_is_refused(api):
    response = api.post("/api/notes/images/", data={"name": "x"}, json=None)

    assert response.status_code == 400
    assert "file" in response.json()["errors"]


def test_a_page_showing_an_image_by_its_url_keeps_it_linked(api, user):
    image = upload(api, image_bytes()).json()

    page = api.post(
        "/api/notes/pages/", {"title": "Pets", "content": f"![cat]({image['url']})"}
    ).json()

    assert page["image_ids"] == [image["id"]]

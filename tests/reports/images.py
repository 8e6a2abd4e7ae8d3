"""Plain-coloured test images, and reading them back out of a PDF."""

import base64
import io

from django.core.files.base import ContentFile
from PIL import Image as PILImage
from pypdf import PdfReader

from notes.models import Image, ImageStatus

RED, GREEN, BLUE, YELLOW, CYAN = (200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)


def png(colour: tuple[int, int, int], size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(content: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(content).decode()}"


def stored_image(owner, colour: tuple[int, int, int], status=ImageStatus.STORED) -> Image:
    """An image as the upload job leaves it in Django storage."""
    content = png(colour)
    image = Image.objects.create(
        owner=owner,
        status=status,
        original_name="pic.png",
        content_type="image/png",
        size=len(content),
        width=24,
        height=16,
        backend="storage",
    )
    image.file.save(f"{image.id}.png", ContentFile(content), save=False)
    image.public_id, image.url = image.file.name, image.file.url
    image.save()
    return image


def colours_of_images(pdf: bytes | PdfReader) -> set[tuple[int, ...]]:
    """The colour of each image in the document (the test images are plain colours)."""
    reader = pdf if isinstance(pdf, PdfReader) else PdfReader(io.BytesIO(pdf))
    return {
        image.image.convert("RGB").getpixel((0, 0))
        for page in reader.pages
        for image in page.images
    }

"""Keys the settings need before Django is set up: the development secret key kept under
`var/`, and keys derived from the secret key for one purpose each."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def development_secret_key(path: Path) -> str:
    """The key kept in `path`, made at random by the first process that asks for it.

    The key is written whole to a private temporary file (mode 0600) and then linked to
    `path`, which fails if another process got there first; everyone then reads the
    one that won, so processes starting together agree on the key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(50))
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary)
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty; delete it to have a new key made")
    return key


def derive_key(secret: str, purpose: str) -> str:
    """A key for one purpose, derived from `secret` so that it never equals it."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()

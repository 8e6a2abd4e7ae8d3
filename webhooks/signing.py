"""The signature on every delivery: `Jobsite-Signature: t=<unix time>,v1=<hex>`, where
hex is HMAC-SHA256 of f"{t}.{body}" under the endpoint's secret. The time lets a
receiver refuse a replayed request older than a few minutes (docs/webhooks.md)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

SIGNATURE_HEADER = "Jobsite-Signature"


def body_of(payload: dict[str, Any]) -> bytes:
    """The bytes sent for `payload`: the same on every attempt and replay."""
    return json.dumps(
        payload, cls=DjangoJSONEncoder, separators=(",", ":"), sort_keys=True
    ).encode()


def signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The Jobsite-Signature header's value for `body` sent at `timestamp` (now)."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"

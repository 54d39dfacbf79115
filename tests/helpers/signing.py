"""Standard Webhooks secrets and the reference library's verdict, for tests of signed
deliveries (never the daemon's own verifier)."""

from __future__ import annotations

import base64
import os

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def library_verifies(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    """Whether the `standardwebhooks` library accepts the delivery with `secret`."""
    try:
        Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    except WebhookVerificationError:
        return False
    return True

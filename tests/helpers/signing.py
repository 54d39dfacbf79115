"""Standard Webhooks secrets and verification, as a receiver would check them (with the
reference library, never the daemon's own code)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def library_verifies(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    try:
        Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    except WebhookVerificationError:
        return False
    return True

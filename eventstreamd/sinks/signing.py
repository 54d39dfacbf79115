"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature`.

Decisions:
- The signed content is `{webhook-id}.{webhook-timestamp}.{body}` over exactly
  the bytes sent (the event's stored delivery body); the signature is
  `v1,<base64 HMAC-SHA256>` (https://www.standardwebhooks.com), so receivers
  verify with the `standardwebhooks` library or any of its ports.
- `webhook-id` is the event id (the same value as `Idempotency-Key`): one
  message, the same id on every retry and redelivery. The timestamp is the
  attempt's: receivers refuse old timestamps, so each retry is signed anew.
- Rotation, as Svix and Outpost do it: with `webhook.previous_signing_secret`
  set, every delivery carries both signatures, space-separated; a receiver
  holding either secret accepts it.
- Cost per delivery: the keys are decoded and their HMAC states prepared
  once (`hmac.new(key)`), and each attempt copies a prepared state and feeds
  it the prefix and the body: one HMAC per secret per delivery, no key
  schedule.
- `verify` is for `eventstreamd listen`, which shows whether a delivery's
  signature holds; the test suite checks deliveries with the `standardwebhooks`
  library instead, so this module is not its own judge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence

from ..config import signing_key

TOLERANCE = 5 * 60  # seconds a receiver accepts a timestamp off by (the library's default)


class Signer:
    def __init__(self, secrets: Sequence[str], clock: Callable[[], float] = time.time) -> None:
        if not secrets:
            raise ValueError("a signer needs at least one secret")
        self._states = [hmac.new(signing_key(secret), digestmod=hashlib.sha256)
                        for secret in secrets]
        self._clock = clock

    def headers(self, message_id: str, body: bytes) -> dict[str, str]:
        timestamp = str(int(self._clock()))
        prefix = f"{message_id}.{timestamp}.".encode()
        signatures = []
        for prepared in self._states:
            state = prepared.copy()
            state.update(prefix)
            state.update(body)
            signatures.append("v1," + base64.b64encode(state.digest()).decode())
        return {"webhook-id": message_id, "webhook-timestamp": timestamp,
                "webhook-signature": " ".join(signatures)}


def verify(secret: str, headers: Mapping[str, str], body: bytes, *,
           now: float | None = None) -> str:
    """Why the delivery's signature does not hold for `secret`, or "" when it does.
    `headers` must look names up case-insensitively (aiohttp's do)."""
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    if not (message_id and timestamp and signature):
        return "no webhook-id / webhook-timestamp / webhook-signature headers"
    try:
        sent_at = int(timestamp)
    except ValueError:
        return f"bad webhook-timestamp {timestamp!r}"
    current = time.time() if now is None else now
    if abs(current - sent_at) > TOLERANCE:
        return f"timestamp {current - sent_at:+.0f}s off (more than {TOLERANCE}s)"
    expected = Signer([secret], clock=lambda: sent_at).headers(message_id, body)
    wanted = expected["webhook-signature"]
    for candidate in signature.split(" "):
        if hmac.compare_digest(candidate.encode(), wanted.encode()):
            return ""
    return "no signature matches the secret"


_signers: dict[tuple[str, ...], Signer] = {}


def signer_for(secrets: tuple[str, ...]) -> Signer | None:
    """The process's signer for these secrets (built once), or None when unsigned."""
    if not secrets:
        return None
    signer = _signers.get(secrets)
    if signer is None:
        signer = _signers[secrets] = Signer(secrets)
    return signer

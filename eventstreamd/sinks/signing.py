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
- An integration may have a secret of its own (`callback_parameters.
  signing_secret`), signing its deliveries instead of the global ones, and
  rotate it while it runs (`POST .../_rotate_secret`): the previous secret
  signs too until the overlap ends. What signs an integration's deliveries
  now is its `SigningState`, one per integration in `SinkEnv.signing`,
  read by every attempt: the integration service updates it before it
  answers a rotation, so every attempt this daemon starts after the answer
  carries the new signature, with no sink restart. A state never goes back
  to an older version of the secrets (every change counts the record's
  `signing_version` up, so a sink starting from a record read before the
  rotation cannot undo it), and the previous secret stops signing at the
  overlap's end by the clock, whether or not its record was cleaned up yet.
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

from ..config import SIGNING_PREFIX, signing_key
from ..logs import redactor

TOLERANCE = 5 * 60  # seconds a receiver accepts a timestamp off by (the library's default)


def register_secrets(secrets: tuple[str, ...]) -> None:
    """Signing secrets for the log redactor, whole and by their key part."""
    for secret in secrets:
        redactor.add(secret)
        redactor.add(secret.removeprefix(SIGNING_PREFIX))


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
_SIGNERS_MAX = 256  # distinct secret sets kept; rotations add one each


def signer_for(secrets: tuple[str, ...]) -> Signer | None:
    """The process's signer for these secrets (built once), or None when unsigned."""
    if not secrets:
        return None
    signer = _signers.get(secrets)
    if signer is None:
        if len(_signers) >= _SIGNERS_MAX:
            _signers.clear()
        signer = _signers[secrets] = Signer(secrets)
    return signer


class SigningState:
    """The secrets signing one integration's deliveries now (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._version = -1  # which change of the secrets it reflects (counts up per change)
        self._only: Signer | None = None  # the current secret(s) alone
        self._both: Signer | None = None  # current and previous, during an overlap
        self._until = 0.0  # epoch seconds: the end of the overlap

    def update(self, current: tuple[str, ...], previous: tuple[str, ...], until_ms: int | None,
               version: int) -> bool:
        """Sign with `current` (and `previous` until `until_ms`) from now on; ignored (False)
        when `version` is older than the one in effect (a record read before a rotation)."""
        if version < self._version:
            return False
        self._version = version
        previous = tuple(p for p in previous if p not in current)
        self._only = signer_for(current)
        self._both = signer_for(current + previous) if previous and until_ms else None
        self._until = (until_ms or 0) / 1000
        return True

    def signer(self) -> Signer | None:
        """The signer for an attempt starting now; None when unsigned."""
        if self._both is not None and self._clock() < self._until:
            return self._both
        return self._only

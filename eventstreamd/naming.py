"""What event names, tenants and ids may be: one definition for ingest, config and the sinks.

Decisions (each rule exists because a sink must be able to use the value):
- Patterns are applied with `fullmatch`: `$` also matches before a trailing
  newline, and a name or tenant ending in `\\n` makes S3 keys that fail forever.
- A tenant becomes a segment of S3 keys (`{prefix}/{tenant}/...`): `.` and
  `..` are refused, since servers normalise them away and the key would change.
- An event id becomes the `Idempotency-Key` header of every delivery, so it
  is visible ASCII only (no space, no control character).
- An integration id is what the spec allows (lower-case letters, digits and
  `-`, at most 50); anything else cannot name a stored integration (nor reach
  LMDB, whose keys are limited to 511 bytes).
- A subject token (JetStream: the prefix, an instance name, an id in a
  subject) is letters, digits, `_` and `-`: no `.` (the token separator), no
  `*` or `>` (wildcards), no space.
"""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
TENANT_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
EVENT_ID_PATTERN = re.compile(r"[\x21-\x7e]+")
INTEGRATION_ID_PATTERN = re.compile(r"[a-z0-9-]{1,50}")
SUBJECT_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
UNSAFE_TENANTS = frozenset({".", ".."})
MAX_NAME = 256
MAX_TENANT = 128
MAX_ID = 128


def valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME and NAME_PATTERN.fullmatch(name) is not None


def valid_tenant(tenant: str) -> bool:
    return (0 < len(tenant) <= MAX_TENANT and TENANT_PATTERN.fullmatch(tenant) is not None
            and tenant not in UNSAFE_TENANTS)


def valid_event_id(event_id: str) -> bool:
    return len(event_id) <= MAX_ID and EVENT_ID_PATTERN.fullmatch(event_id) is not None


def valid_integration_id(integration_id: str) -> bool:
    return INTEGRATION_ID_PATTERN.fullmatch(integration_id) is not None


def valid_subject_token(value: str, max_length: int) -> bool:
    """Whether `value` can be one token of a NATS subject, at most `max_length` long."""
    return len(value) <= max_length and SUBJECT_TOKEN_PATTERN.fullmatch(value) is not None

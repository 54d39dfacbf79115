"""Bearer-token authentication for every route but `/healthz`.

Decisions:
- Tokens come from `auth.tokens`; when that list is empty a token is generated
  on first start, stored in `{data_dir}/api_token` (mode 0600, created
  exclusively so a concurrent start cannot race it) and logged once, on the
  start that created it. Every token is registered with the log redactor right
  after, so no later line can print it.
- Comparison uses `hmac.compare_digest` against every configured token, so the
  time taken does not depend on which token (or how much of one) matched.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from aiohttp import web

from ..config import Config
from ..logs import kv, redactor
from ..runtime import token_file
from .errors import ApiError, Handler
from .keys import TOKENS

log = logging.getLogger("eventstreamd.auth")

PUBLIC_PATHS = frozenset({"/healthz"})


def resolve_tokens(config: Config) -> tuple[str, ...]:
    """The accepted tokens; generates and stores one when none is configured."""
    if config.auth.tokens:
        tokens = config.auth.tokens
    else:
        tokens = (_load_or_create(token_file(config)),)
    for token in tokens:
        redactor.add(token)
    return tokens


def _load_or_create(path: Path) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise RuntimeError(f"{path} is empty: delete it to generate a new token") from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    # Logged once, on the start that created it; registered with the redactor after.
    log.warning(
        "no auth.tokens configured: generated an API token (stored in %s): %s", path, token,
        extra=kv(file=str(path)),
    )
    return token


def token_matches(presented: str, tokens: tuple[str, ...]) -> bool:
    # aiohttp decodes header bytes that are not UTF-8 as surrogate escapes: give
    # them back as the bytes that were sent (they match no token) instead of failing.
    candidate = presented.encode("utf-8", "surrogateescape")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token.encode())
    return matched


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)")
    if not token_matches(presented.strip(), request.app[TOKENS]):
        raise ApiError(401, "unauthorized", "invalid bearer token")
    return await handler(request)

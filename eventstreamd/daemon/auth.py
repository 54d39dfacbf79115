"""Bearer-token authentication for every route but `/healthz`, `/readyz` and the web console.

Decisions:
- Tokens come from `auth.tokens`; when that list is empty a token is generated
  on first start and stored in `{data_dir}/api_token` (mode 0600, created
  exclusively so a concurrent start cannot race it). The token itself is
  never logged, in any format: the log says where the file is. It is written
  only once the daemon has started (`GeneratedToken.save`, called by the
  lifecycle after the port is bound), so a start that fails (port in use)
  leaves nothing behind. Every token is registered with the log redactor at
  once, so no line can print it.
- The web console's files (`/ui/...`) are public: they hold no data, and every
  call they make carries the token (console.py).
- Comparison uses `hmac.compare_digest` against every configured token, so the
  time taken does not depend on which token (or how much of one) matched.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..config import Config
from ..logs import kv, redactor
from ..runtime import token_file
from .errors import ApiError, Handler
from .keys import CONFIG, TOKENS

log = logging.getLogger("eventstreamd.auth")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/ui"})
PUBLIC_PREFIX = "/ui/"


@dataclass(frozen=True)
class GeneratedToken:
    """A token made on this start, to be stored once the daemon has started."""

    path: Path
    token: str

    def save(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.token + "\n")
        log.warning("no auth.tokens configured: generated an API token and stored it in %s "
                    "(mode 0600); clients on this host read it from there", self.path,
                    extra=kv(file=str(self.path)))


def resolve_tokens(config: Config) -> tuple[tuple[str, ...], GeneratedToken | None]:
    """The accepted tokens, and a generated one still to be saved (when none is configured
    and `{data_dir}/api_token` does not exist yet)."""
    generated = None
    if config.auth.tokens:
        tokens = config.auth.tokens
    else:
        path = token_file(config)
        stored = _load(path)
        if stored is None:
            generated = GeneratedToken(path, secrets.token_urlsafe(32))
            stored = generated.token
        tokens = (stored,)
    for token in tokens:
        redactor.add(token)
    return tokens, generated


def _load(path: Path) -> str | None:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not token:
        raise RuntimeError(f"{path} is empty: delete it to generate a new token")
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
    path = request.path
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX) or (
            path == "/metrics" and request.app[CONFIG].metrics.public):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)")
    if not token_matches(presented.strip(), request.app[TOKENS]):
        raise ApiError(401, "unauthorized", "invalid bearer token")
    return await handler(request)

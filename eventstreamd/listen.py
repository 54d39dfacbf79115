"""`eventstreamd listen`: a local webhook receiver that prints every delivery.

The way to try eventstreamd in a minute (the README's quick start uses it) and
to look at exactly what a receiver gets.

Decisions:
- Any method on any path is a delivery: it is printed (request line, headers,
  the body pretty-printed when it is JSON) and answered with `--status`
  (200 by default; 400 makes the daemon keep the event as rejected, 500 makes
  it retry). Non-2xx answers carry a short JSON body, which the daemon shows
  as the receiver's answer.
- With a signing secret (`--secret`, else `webhook.signing_secret` and
  `previous_signing_secret` of the config) each delivery's Standard Webhooks
  signature is checked and the verdict printed; it never changes the answer.
- Secrets a delivery carries (the `Authorization` header) are shown masked.
- What a client sent reaches the terminal as text only: control characters in
  the request line, headers or a body that is not JSON are shown escaped
  (`\\x1b`), so a body cannot move the cursor, retitle the window or clear the
  screen (JSON bodies are re-printed by orjson, which escapes C0 controls in
  strings; C1 ones are escaped here too).
- The signing secrets it checks with are registered with the log redactor
  (`register_secrets`), and every printed block is scrubbed with it, as the
  daemon's log lines are.
- The first line says where it listens (with `--port 0`, the port chosen),
  flushed at once so scripts can read it; SIGINT/SIGTERM end it with exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import IO

import orjson
from aiohttp import web

from .logs import escape_controls, redactor
from .sinks.signing import register_secrets, verify


class Listener:
    def __init__(self, status: int = 200, secrets: tuple[str, ...] = (),
                 out: IO[str] = sys.stdout) -> None:
        self.status = status
        self.secrets = secrets
        self.out = out
        self.count = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.count += 1
        lines = [f"--- #{self.count} {request.method} {request.path_qs} "
                 f"at {time.strftime('%H:%M:%S')} -> {self.status}"]
        for name, value in request.headers.items():
            if name.lower() == "authorization":
                scheme, _, credential = value.partition(" ")
                value = f"{scheme} {credential[:2]}***" if credential else "***"
            lines.append(f"{name}: {value}")
        if self.secrets:
            reasons = [verify(secret, request.headers, body) for secret in self.secrets]
            verdict = ("ok" if "" in reasons else f"INVALID ({reasons[0]})")
            lines.append(f"signature: {verdict}")
        lines.append("")
        lines.append(_pretty(body))
        print(escape_controls(redactor.scrub("\n".join(lines)), keep="\n\t"), file=self.out,
              flush=True)
        if 200 <= self.status < 300:
            return web.Response(status=self.status)
        return web.json_response({"error": f"answered {self.status} by eventstreamd listen "
                                           "--status"}, status=self.status)


def _pretty(body: bytes) -> str:
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")


async def serve(host: str, port: int, listener: Listener) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", listener.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = next(a for a in runner.addresses if isinstance(a, tuple))
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        checking = ("; checking signatures" if listener.secrets
                    else "; not checking signatures (no --secret)")
        print(f"listening on http://{shown}:{bound[1]}/ (answering {listener.status}"
              f"{checking}); Ctrl-C ends it", file=listener.out, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_listener(host: str, port: int, status: int, secrets: tuple[str, ...]) -> None:
    register_secrets(secrets)
    asyncio.run(serve(host, port, Listener(status, secrets)))


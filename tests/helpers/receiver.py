"""A real local webhook receiver (aiohttp on 127.0.0.1, port 0): it records what arrives and
answers as the test scripts it. The one receiver of the tests, and of the benchmarks
(bench/receiver.py counts with it in a process of its own).

Decisions:
- A responder decides each answer: `responder(received, attempt)` returns a response or
  an awaitable of one; `attempt` counts the requests with the same Idempotency-Key.
  The fault modes are responders: `answer(status, text, retry_after=...)`,
  `delayed(seconds, then)`, `drop` (the connection closed, no answer), `garbage` (bytes
  that are not HTTP, then closed), `Switch` (one answer until flipped, then another) and
  `RandomFaults` (a seeded, replayable mix of all of them). `hold(when)` keeps matching
  requests unanswered until `release()`: a receiver that hangs, as long as the test wants.
- A request is kept whole (`requests`; `delivered` when answered 2xx): the raw bytes the
  daemon sent (signatures cover exactly those), the headers as sent, the path (one
  receiver serves many integrations on `/hook/{name}`) and the wall-clock time its head
  arrived (comparable with the daemons' log time stamps). `keep=False` keeps nothing:
  the benchmark's receiver takes millions of requests and counts them in `arrived`.
- Served with aiohttp's AppRunner (no access log), handlers cancelled when the daemon
  hangs up, as aiohttp's TestServer does: a request the daemon gave up on is never
  counted as delivered.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

HOST = "127.0.0.1"


@dataclass
class Received:
    raw: bytes
    headers: Mapping[str, str]  # as sent (a plain dict: names case-sensitive) when kept
    path: str
    at: float  # time.time() when the request's head arrived
    _body: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def body(self) -> Any:
        """The body parsed (once: functools.cached_property takes a lock per access)."""
        if self._body is None:
            self._body = orjson.loads(self.raw)
        return self._body

    @property
    def key(self) -> str:
        return self.headers.get("Idempotency-Key", "")

    @property
    def hook(self) -> str:
        """The last segment of the path: the integration's name in `Receiver.hook_url`."""
        return self.path.rpartition("/")[2]

    @property
    def instance(self) -> str:
        """The daemon instance that sent it (its User-Agent names it in a cluster)."""
        agent = self.headers.get("User-Agent", "")
        return agent.rpartition("(instance ")[2].rstrip(")") if "(instance " in agent else ""


Responder = Callable[[Received, int], Awaitable[web.StreamResponse] | web.StreamResponse]


# ------------------------------------------------------------------- fault modes

def ok(_: Received, __: int) -> web.Response:
    return web.Response(status=200)


def answer(status: int, text: str = "", *, retry_after: str | None = None) -> Responder:
    """Always this status (and body text, and Retry-After header)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else None

    def respond(_: Received, __: int) -> web.Response:
        return web.Response(status=status, text=text, headers=headers)

    return respond


def delayed(seconds: float, then: Responder = ok) -> Responder:
    """`then`'s answer, `seconds` late (past the daemon's timeout, if it is shorter)."""
    async def respond(received: Received, attempt: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        response = then(received, attempt)
        return response if isinstance(response, web.StreamResponse) else await response

    return respond


class _HangUp(web.StreamResponse):
    """Instead of an answer: `first` bytes written raw, then the connection closed."""

    def __init__(self, first: bytes = b"") -> None:
        super().__init__(status=599)  # never 2xx: not delivered
        self._first = first

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if request.transport is not None:
            if self._first:
                request.transport.write(self._first)
            request.transport.close()
        raise ConnectionResetError  # aiohttp then leaves the closed connection alone


def drop(_: Received, __: int) -> web.StreamResponse:
    return _HangUp()


def garbage(_: Received, __: int) -> web.StreamResponse:
    return _HangUp(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n")


class Switch:
    """A responder answering as `before` until `flip()`, then as `after`: a receiver that
    refuses until it is fixed."""

    def __init__(self, before: Responder, after: Responder = ok) -> None:
        self.before = before
        self.after = after
        self.flipped = False

    def flip(self) -> None:
        self.flipped = True

    def __call__(self, received: Received,
                 attempt: int) -> Awaitable[web.StreamResponse] | web.StreamResponse:
        return (self.after if self.flipped else self.before)(received, attempt)


class RandomFaults:
    """A responder misbehaving at random: errors, throttling, slowness, drops, garbage.

    Faults are drawn from a seeded RNG per (key, attempt), so a failing run can be
    replayed. After `max_faults` faulty answers to one event it answers 200, which
    bounds the test's duration."""

    FAULTS = ("ok", "reject", "error", "throttle", "slow", "drop", "garbage")
    WEIGHTS = (40, 10, 12, 12, 8, 10, 8)
    FINAL = frozenset({"ok", "reject"})

    def __init__(self, seed: int = 1, slow_seconds: float = 0.8, max_faults: int = 5) -> None:
        self.seed = seed
        self.max_faults = max_faults
        self.answers: dict[str, list[str]] = collections.defaultdict(list)
        self._responders: dict[str, Responder] = {
            "ok": ok, "reject": answer(400, "invalid order"), "error": answer(500, "boom"),
            "throttle": answer(429, retry_after="0"),
            "slow": delayed(slow_seconds, answer(500)), "drop": drop, "garbage": garbage}

    def final(self) -> dict[str, str]:
        """Each event's last answer, when it is one the daemon acts on for good."""
        return {key: answers[-1] for key, answers in self.answers.items()
                if answers[-1] in self.FINAL}

    def _choose(self, key: str) -> str:
        so_far = self.answers[key]
        if sum(1 for a in so_far if a not in self.FINAL) >= self.max_faults:
            return "ok"
        rng = random.Random(f"{self.seed}/{key}/{len(so_far)}")
        return rng.choices(self.FAULTS, self.WEIGHTS)[0]

    async def __call__(self, received: Received, attempt: int) -> web.StreamResponse:
        fault = self._choose(received.key)
        self.answers[received.key].append(fault)
        response = self._responders[fault](received, attempt)
        return response if isinstance(response, web.StreamResponse) else await response


# ----------------------------------------------------------------------- receiver

class Receiver:
    """Records every request (unless `keep=False`); `responder` decides the answers.
    `max_concurrent` is the most requests it was handling at once (ordered delivery)."""

    def __init__(self, responder: Responder = ok, *, keep: bool = True) -> None:
        self.responder = responder
        self.keep = keep
        self.requests: list[Received] = []
        self.delivered: list[Received] = []  # answered 2xx
        self.attempts: dict[str, int] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._hold: Callable[[Received], bool] | None = None
        self._released = anyio.Event()
        self._waiting: collections.Counter[str] = collections.Counter()
        self.concurrent = 0
        self.max_concurrent = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at = time.time()
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            # Kept requests get their headers copied; counting needs no copy (it costs more
            # than the rest of this handler).
            headers = dict(request.headers) if self.keep else request.headers
            received = Received(await request.read(), headers, request.path, at)
            attempt = self.arrived(received)
            if self._hold is not None and self._hold(received):
                await self._held(received)
            response = self.responder(received, attempt)
            if not isinstance(response, web.StreamResponse):
                response = await response
        finally:
            self.concurrent -= 1
        if self.keep and 200 <= response.status < 300:
            self.delivered.append(received)
        return response

    def arrived(self, received: Received) -> int:
        """Takes note of a request; its attempt number (1 for all when nothing is kept)."""
        if not self.keep:
            return 1
        self.requests.append(received)
        attempt = self.attempts[received.key] = self.attempts.get(received.key, 0) + 1
        return attempt

    def routes(self, router: web.UrlDispatcher) -> None:
        """Routes besides the webhook's (a subclass adds them; this catches every POST)."""

    # --------------------------------------------------------------- holding

    def hold(self, when: Callable[[Received], bool] = lambda _: True) -> None:
        """Requests for which `when(received)` holds wait unanswered until `release()`."""
        self._hold = when
        if self._released.is_set():
            self._released = anyio.Event()

    def release(self) -> None:
        self._hold = None
        self._released.set()

    def held(self, hook: str | None = None) -> int:
        """Requests waiting to be released now (for one hook, or all)."""
        return self._waiting[hook] if hook is not None else sum(self._waiting.values())

    async def _held(self, received: Received) -> None:
        self._waiting[received.hook] += 1
        try:
            await self._released.wait()
        finally:
            self._waiting[received.hook] -= 1

    # -------------------------------------------------------------- serving

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app.router)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0, backlog=1024)
        await site.start()
        self.port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
        return self

    async def close(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/events"

    def hook_url(self, name: str) -> str:
        """A URL of its own for one of many integrations (`Received.hook` is `name`)."""
        return f"http://{HOST}:{self.port}/hook/{name}"

    # ------------------------------------------------------------ what came

    @property
    def delivered_keys(self) -> set[str]:
        return {r.key for r in self.delivered}

    def keys(self, hook: str) -> collections.Counter[str]:
        """How often each event (Idempotency-Key) was delivered to one hook."""
        return collections.Counter(r.key for r in self.delivered if r.hook == hook)

    def owners(self) -> dict[str, str]:
        """Hook -> the daemon instance of its latest delivery."""
        return {r.hook: r.instance for r in self.delivered}

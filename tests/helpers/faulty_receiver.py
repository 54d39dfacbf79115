"""A raw-TCP webhook receiver misbehaving at random: errors, throttling, slowness, drops, garbage.

It speaks just enough HTTP/1.1 to read one request at a time (Content-Length
bodies) and answer. Faults are drawn from a seeded RNG per (key, attempt), so a
failing run can be replayed. After `max_faults` faulty answers to one event it
answers 200, which bounds the test's duration.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import orjson

FAULTS = ("ok", "reject", "error", "throttle", "slow", "drop", "garbage")
WEIGHTS = (40, 10, 12, 12, 8, 10, 8)
FINAL = {"ok", "reject"}


class FaultyReceiver:
    def __init__(self, seed: int = 1, slow_seconds: float = 0.8, max_faults: int = 5) -> None:
        self.seed = seed
        self.slow_seconds = slow_seconds
        self.max_faults = max_faults
        self.answers: dict[str, list[str]] = defaultdict(list)
        self.bodies: dict[str, dict[str, object]] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def start(self) -> FaultyReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def final(self) -> dict[str, str]:
        """Each event's last answer, when it is one the daemon acts on for good."""
        return {key: answers[-1] for key, answers in self.answers.items()
                if answers[-1] in FINAL}

    def _choose(self, key: str) -> str:
        attempt = len(self.answers[key])
        faults_so_far = sum(1 for a in self.answers[key] if a not in FINAL)
        if faults_so_far >= self.max_faults:
            return "ok"
        rng = random.Random(f"{self.seed}/{key}/{attempt}")
        return rng.choices(FAULTS, WEIGHTS)[0]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                key = headers.get("idempotency-key", "")
                self.bodies[key] = orjson.loads(body)
                fault = self._choose(key)
                self.answers[key].append(fault)
                if not await self._answer(fault, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, fault: str, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False when the connection must close."""
        def respond(status: str, extra: str = "", body: bytes = b"") -> None:
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
                         .encode() + body)

        if fault == "ok":
            respond("200 OK")
        elif fault == "reject":
            respond("400 Bad Request", body=b"invalid order")
        elif fault == "error":
            respond("500 Internal Server Error", body=b"boom")
        elif fault == "throttle":
            respond("429 Too Many Requests", "Retry-After: 0\r\n")
        elif fault == "slow":
            await asyncio.sleep(self.slow_seconds)  # past the daemon's timeout
            respond("500 Internal Server Error")
        elif fault == "drop":
            return False
        elif fault == "garbage":
            writer.write(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n")
            await writer.drain()
            return False
        await writer.drain()
        return True

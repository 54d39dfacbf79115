"""A minimal keep-alive HTTP/1.1 client for the load generators.

Decisions:
- The load generator must not be the bottleneck, and a general-purpose client
  (aiohttp's) costs about as much CPU per request as the server it measures.
  Requests here are pre-encoded bytes (request line, headers and body built
  once), written to a plain asyncio stream; the answer is read by its
  Content-Length (or chunked encoding). One request at a time per
  connection, no pipelining — the same way an ordinary client behaves.
- Used against the daemon and the bare baseline server alike, so both sides
  of a ratio see the same client.
"""

from __future__ import annotations

import asyncio
import urllib.parse


def split_url(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"


def encode_request(method: str, url: str, body: bytes, headers: dict[str, str]) -> bytes:
    host, port, path = split_url(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpError(Exception):
    pass


class RawConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> RawConnection:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 22)
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._reader = self._writer = None

    async def request(self, encoded: bytes) -> tuple[int, bytes]:
        """Send one pre-encoded request; return (status, body)."""
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(encoded)
        if len(encoded) > 65536:
            await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            body = await self._read_chunked()
        elif length >= 0:
            body = await self._reader.readexactly(length) if length else b""
        else:
            raise HttpError("response without Content-Length")
        if close:
            await self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        for _ in range(1_000_000):
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)
        raise HttpError("too many chunks")

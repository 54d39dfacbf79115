"""The daemon's control socket, from a test: a raw line client, and waiting until an
integration has settled (so a test asserts "nothing more arrives" on counted state, not
after a fixed sleep)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.helpers.daemon import DaemonProcess
from tests.helpers.wait import eventually

WAIT = 20.0  # the default bound on a wait, in seconds


class Line:
    """A raw control-socket client: send exact bytes, read one JSON line at a time."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self._ids = 0

    @classmethod
    async def connect(cls, path: Path) -> Line:
        return cls(await anyio.connect_unix(path))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def read(self, within: float = WAIT) -> dict[str, Any]:
        with anyio.fail_after(within):
            return orjson.loads(await self.reader.receive_until(b"\n", 1 << 24))

    async def response(self, within: float = WAIT) -> dict[str, Any]:
        """The next response, skipping status pushes."""
        with anyio.fail_after(within):
            while True:
                message = await self.read()
                if "event" not in message:
                    return message

    async def push(self, within: float = WAIT) -> dict[str, Any]:
        with anyio.fail_after(within):
            while True:
                message = await self.read()
                if message.get("event") == "status":
                    return message["data"]

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        await self.send_raw(orjson.dumps({"id": self._ids, "op": op, **fields}) + b"\n")
        response = await self.response()
        assert response["id"] == self._ids
        return response

    async def close(self) -> None:
        await self.stream.aclose()


def control_path(daemon: DaemonProcess) -> Path:
    return daemon.data_dir / "control.sock"


async def status(daemon: DaemonProcess) -> dict[str, Any]:
    """One status snapshot, over a connection of its own."""
    client = await Line.connect(control_path(daemon))
    try:
        return (await client.call("status"))["result"]
    finally:
        await client.close()


async def wait_settled(daemon: DaemonProcess, integration_ids: Iterable[str],
                       timeout: float = 60.0, *, cursor_saved: bool = True) -> dict[str, Any]:
    """Until each integration's durable cursor is past the log's head with nothing in
    flight and no open S3 file: everything stored was delivered (or set aside) and the
    cursor saved, so no later delivery or object can appear without new events. Returns
    the last status snapshot.

    `cursor_saved=False` is for a test whose cursor is saved rarely on purpose, and
    which already saw the last event arrive: then nothing in flight is enough."""
    wanted = set(integration_ids)
    client = await Line.connect(control_path(daemon))

    async def snapshot() -> dict[str, Any]:
        result: dict[str, Any] = (await client.call("status"))["result"]
        return result

    def settled(snapshot: dict[str, Any]) -> bool:
        present = {i["id"] for i in snapshot["integrations"]}
        return wanted <= present and all(_settled(i, cursor_saved)
                                         for i in snapshot["integrations"]
                                         if i["id"] in wanted)

    try:
        return await eventually(snapshot, settled, within=timeout,
                                what=f"{sorted(wanted)} settled")
    finally:
        await client.close()


def _settled(integration: dict[str, Any], cursor_saved: bool) -> bool:
    return ((integration["lag_events"] == 0 or not cursor_saved)
            and not integration["in_flight"] and not integration["buffered_bytes"])

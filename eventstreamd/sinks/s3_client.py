"""The S3 client of the S3 sink: botocore's, called from worker threads.

Decisions:
- An upload's client-side work is CPU: SigV4 hashes the whole body (SHA-256
  over plain HTTP, as with MinIO or moto), the default CRC32 checksum reads it
  again, and the body is sent. On the event loop (aiobotocore) that is about
  0.2-0.3 s per 50 MiB file during which nothing else runs: not the API, not
  other sinks, not the spooling of the next file (measured: a 50 MiB PUT took
  0.8-0.9 s while the next file spooled against 0.46 s bare). In a worker
  thread, hashing and socket writes release the GIL, so they run beside the
  event loop on another core.
- botocore's clients are thread-safe; one client per pipeline, its
  connection pool sized for the multipart parts in flight. Requests are not
  retried by botocore (`max_attempts` 1): the sink's retry loop retries,
  logs and shows each failure.
- A call abandoned by a stop (`abandon_on_cancel`) finishes or times out in
  its thread; nothing depends on it: a recorded file is uploaded again under
  the same key on the next start.
- The client is created in a worker thread too (importing botocore and
  loading the S3 model take ~0.3 s of CPU): the event loop goes on meanwhile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class S3Client:
    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    async def connect(cls, *, region: str, endpoint_url: str | None,
                      access_key_id: str | None, secret_access_key: str | None,
                      request_timeout: float, max_connections: int) -> S3Client:
        def create() -> Any:
            import botocore.session
            from botocore.config import Config

            config = Config(
                connect_timeout=request_timeout, read_timeout=max(request_timeout, 30.0),
                retries={"max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path"} if endpoint_url else None,
                max_pool_connections=max_connections,
            )
            return botocore.session.get_session().create_client(
                "s3", region_name=region, endpoint_url=endpoint_url or None,
                aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                config=config)

        return cls(await anyio.to_thread.run_sync(create))

    async def call(self, operation: str, **params: Any) -> Any:
        """One S3 operation (`put_object`, `head_object` ...) in a worker thread."""
        return await self.run(lambda client: getattr(client, operation)(**params))

    async def run(self, work: Callable[[Any], T]) -> T:
        """`work(botocore_client)` in a worker thread (several calls, or a file read with
        the call)."""
        return await anyio.to_thread.run_sync(functools.partial(work, self._client),
                                              abandon_on_cancel=True)

    def close(self) -> None:
        self._client.close()

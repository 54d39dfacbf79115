"""A real S3 endpoint for tests: moto's server as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session

from .processes import end, free_port, until_ready
from .wait import eventually

CREDENTIALS = {"aws_access_key_id": "testing-key-id", "aws_secret_access_key": "testing-secret-1",
               "aws_region": "us-east-1"}


class MotoServer:
    """`moto_server` on a free loopback port (or `port`: a restarted server on the same
    address); `popen` lets the benchmarks spawn it through their process registry."""

    def __init__(self, port: int | None = None,
                 popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.popen = popen
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self.proc = self.popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        try:
            until_ready(self.proc, self._answers, "moto_server", timeout, every=0.1)
        except RuntimeError:
            self.stop()
            raise
        return self

    def _answers(self) -> bool | None:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                return True
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc is not None:
            end(self.proc)

    def client(self) -> Any:
        return get_session().create_client(
            "s3", region_name="us-east-1", endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["aws_access_key_id"],
            aws_secret_access_key=CREDENTIALS["aws_secret_access_key"])

    async def create_bucket(self, bucket: str) -> None:
        async with self.client() as s3:
            await s3.create_bucket(Bucket=bucket)

    async def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in the bucket (key -> content)."""
        out: dict[str, bytes] = {}
        async with self.client() as s3:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    response = await s3.get_object(Bucket=bucket, Key=item["Key"])
                    async with response["Body"] as body:
                        out[item["Key"]] = await body.read()
        return out

    async def wait_objects(self, bucket: str, predicate: Callable[[dict[str, bytes]], bool],
                           timeout: float = 30.0) -> dict[str, bytes]:
        """The bucket's objects once `predicate(objects)` holds."""
        return await eventually(lambda: self.objects(bucket), predicate, within=timeout,
                                every=0.2, what=f"objects in {bucket}")


def s3_params(bucket: str, prefix: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {**CREDENTIALS, "bucket": bucket}
    if prefix:
        params["key_prefix"] = prefix
    return params


def settings(moto: MotoServer, **s3: Any) -> dict[str, Any]:
    return {"s3": {"endpoint_url": moto.url, **s3},
            "webhook": {"retry_initial": "100ms", "retry_max": "500ms", "timeout": "5s"}}

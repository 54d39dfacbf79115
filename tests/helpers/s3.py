"""A real S3 endpoint for tests: moto's server as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
from aiobotocore.session import get_session

CREDENTIALS = {"aws_access_key_id": "testing-key-id", "aws_secret_access_key": "testing-secret-1",
               "aws_region": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited") from None
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

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

    async def wait_objects(self, bucket: str, predicate: Any,
                           timeout: float = 30.0) -> dict[str, bytes]:
        with anyio.fail_after(timeout):
            while True:
                objects = await self.objects(bucket)
                if predicate(objects):
                    return objects
                await anyio.sleep(0.2)


def s3_params(bucket: str, prefix: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {**CREDENTIALS, "bucket": bucket}
    if prefix:
        params["key_prefix"] = prefix
    return params

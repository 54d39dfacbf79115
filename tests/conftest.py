from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstreamd.config import Backend, Config, JetStreamConfig, StorageConfig
from tests.helpers.backends import jetstream_settings, new_prefix
from tests.helpers.daemon import DaemonProcess
from tests.helpers.nats_server import NatsServer
from tests.helpers.s3 import MotoServer


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test module runs its daemon tests on every backend it lists in `BACKENDS`
    (default: LMDB only), as `test_x[lmdb]`, `test_x[jetstream]`; tests/helpers/backends.py
    has the lists."""
    if "backend" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "BACKENDS", None)
        if backends:
            metafunc.parametrize("backend", backends)


@pytest.fixture
def backend() -> str:
    return "lmdb"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server (JetStream, `sync_interval: always`) per test session (per xdist
    worker); every daemon on it has its own stream prefix, so tests never see each other."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
def backend_settings(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """What a daemon's config needs for the test's backend (nothing for LMDB)."""
    if backend == "jetstream":
        return jetstream_settings(request.getfixturevalue("nats_server"))
    return {}


@pytest.fixture
def store_config(backend: Backend, tmp_path: Path, request: pytest.FixtureRequest) -> Config:
    """A config for a store opened in-process (`open_store(store_config)`) on the test's
    backend: LMDB in a temp data dir, or JetStream under a fresh prefix."""
    config = Config(storage=StorageConfig(backend=backend, data_dir=str(tmp_path / "data")))
    if backend == "jetstream":
        server: NatsServer = request.getfixturevalue("nats_server")
        config = dataclasses.replace(config, jetstream=JetStreamConfig(
            servers=(server.url,), prefix=new_prefix()))
    return config


@pytest.fixture
def daemon_factory(tmp_path: Path, backend_settings: dict[str, Any],
                   ) -> Iterator[Callable[..., DaemonProcess]]:
    """Start real daemons (subprocess, port 0, temp data dir); all are stopped afterwards.
    With the JetStream backend each daemon gets a stream prefix of its own."""
    started: list[DaemonProcess] = []

    def factory(settings: dict[str, Any] | None = None, name: str = "d",
                env: dict[str, str] | None = None, **options: Any) -> DaemonProcess:
        workdir = tmp_path / f"{name}{len(started)}"
        workdir.mkdir()
        merged = dict(settings or {})
        for section, values in backend_settings.items():
            merged[section] = {**values, **(merged.get(section) or {})}
        if "jetstream" in backend_settings and "prefix" not in (settings or {}).get(
                "jetstream", {}):
            merged["jetstream"]["prefix"] = new_prefix()  # one per daemon
        proc = DaemonProcess(workdir, merged, env, **options).start()
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.kill()


@pytest.fixture
def daemon(daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    return daemon_factory()


# S3 tests: one moto_server per test module, a fresh bucket per test.
@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


_bucket_counter = iter(range(1_000_000))


@pytest.fixture
async def bucket(moto: MotoServer) -> str:
    name = f"bucket-{next(_bucket_counter)}"
    await moto.create_bucket(name)
    return name

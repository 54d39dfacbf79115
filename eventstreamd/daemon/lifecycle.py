"""The daemon's lifecycle: one owner that starts every long-lived part and stops them in reverse.

Decisions:
- One anyio task group owns the background tasks (log writer, retention,
  supervisor, control socket); an `AsyncExitStack` records how to
  stop each part as it starts, so shutdown runs in exactly reverse order:
  the control socket first (its clients are closed, the socket file removed),
  the HTTP site (no new requests; in-flight ones get `shutdown_grace`), then
  the sinks, then the writer drains its queue, then LMDB closes.
- SIGINT/SIGTERM set the stop event; `run()` returns normally, so the CLI
  exits 0. A second signal while stopping is ignored: shutdown is bounded by
  its own timeouts.
- An exclusive lock on `{data_dir}/daemon.lock` keeps a second daemon off the
  same log; failures while starting (lock, port, store, socket) become one
  `StartupError` line and exit code 1 in the CLI.
- At start the soft open-file limit is raised to the hard one and the HTTP
  connection cap fitted within it (`http_server.connection_limits`), so
  descriptors run out for neither HTTP clients nor anything else.
- `{data_dir}/runtime.json` says where the running daemon listens (its port may
  be 0 in the config); `eventstreamd publish` and the tests read it. It is
  removed on a clean stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import lmdb
from aiohttp import web

from ..config import Config
from ..logs import kv
from ..storage.lmdb_store import LmdbStore
from .api import INTEGRATIONS
from .auth import resolve_tokens
from .control import ControlSocketError, build_control_server
from .http import build_app
from .http_server import DaemonRunner, connection_limits
from .retention import retention_loop
from .supervisor import Supervisor

log = logging.getLogger("eventstreamd.daemon")

RUNTIME_FILE = "runtime.json"
SHUTDOWN_GRACE = 5.0


@dataclass(frozen=True)
class RuntimeInfo:
    pid: int
    url: str
    port: int
    control_socket: str


LOCK_FILE = "daemon.lock"


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir for the daemon's lifetime.

    LMDB itself would let a second process in; two daemons on one log would
    deliver everything twice and disagree about the head. The lock goes with
    the process, so a SIGKILLed daemon never leaves a stale one behind.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError("another eventstreamd is running with this data_dir") from None
    return fd


class StartupError(Exception):
    """The daemon cannot start; the message is one line for the user."""


@contextlib.contextmanager
def _starting(what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, lmdb.Error, RuntimeError, ControlSocketError) as exc:
        raise StartupError(f"cannot {what}: {exc}") from exc


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = anyio.Event()
        self.info: RuntimeInfo | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[RuntimeInfo], None] | None = None) -> None:
        config = self.config
        # Raises the open-file limit, which the HTTP connection cap is derived from.
        limits = connection_limits(config.server)
        async with contextlib.AsyncExitStack() as stack:
            with _starting(f"open the store in {config.data_dir}"):
                stack.callback(os.close, _lock_data_dir(config.data_dir))
                store = LmdbStore(
                    config.data_dir,
                    map_size=config.storage.map_size,
                    log_entries=config.limits.log_entries,
                    rejected_events=config.limits.rejected_events,
                )
            stack.callback(store.close)
            with _starting("set up the API token"):
                tokens = resolve_tokens(config)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs before the group exits
            tg.start_soon(self._watch_signals, name="signals")

            await tg.start(store.writer.run)
            stack.push_async_callback(store.writer.close)
            tg.start_soon(
                retention_loop, store, config.storage.retention, config.storage.retention_check,
                name="retention",
            )

            supervisor = Supervisor(config, store)
            await tg.start(supervisor.run)
            stack.push_async_callback(supervisor.shutdown)

            app = build_app(config, store, tokens, supervisor)
            runner = DaemonRunner(
                app,
                limits=limits,
                access_log=None,
                shutdown_timeout=SHUTDOWN_GRACE,
                handle_signals=False,
                max_field_size=config.server.max_header,
                max_line_size=config.server.max_header,
            )
            with _starting("set up the HTTP server"):
                await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, config.server.host, config.server.port)
            with _starting(f"listen on {config.server.host}:{config.server.port}"):
                await site.start()
            port = _bound_port(runner)
            # After the HTTP app (it shares its IntegrationService); registered after
            # the supervisor, so it stops before it: no client acts on a stopping sink.
            control = build_control_server(config, store, supervisor, app[INTEGRATIONS])
            with _starting("open the control socket"):
                await tg.start(control.run)
            stack.push_async_callback(control.stop)
            self.info = RuntimeInfo(
                pid=os.getpid(),
                url=f"http://{_url_host(config.server.host)}:{port}",
                port=port,
                control_socket=str(config.control_socket),
            )
            runtime_path = config.data_dir / RUNTIME_FILE
            _write_runtime(runtime_path, self.info)
            stack.callback(_remove, runtime_path)
            log.info("eventstreamd listening", extra=kv(
                url=self.info.url, data_dir=str(config.data_dir), head=store.head,
                config=config.source,
            ))
            if on_ready is not None:
                on_ready(self.info)
            await self._stop.wait()
            log.info("stopping")
        log.info("stopped")

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("signal received", extra=kv(signal=signal.Signals(signum).name))
                self.request_stop()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the HTTP site has no TCP address")


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _write_runtime(path: os.PathLike[str], info: RuntimeInfo) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as fh:
        json.dump(info.__dict__, fh)
    os.replace(tmp, path)


def _remove(path: os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def read_runtime(config: Config) -> dict[str, object] | None:
    try:
        with open(config.data_dir / RUNTIME_FILE) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

"""The daemon's lifecycle: one owner that starts every long-lived part and stops them in reverse.

Decisions:
- The wiring is built once, here, and passed down: the store (an async
  context that owns its writer), the shared sink resources (`SinkEnv`: the
  HTTP client session), the change feed, the integration service (the one
  writer of integration records), the supervisor, the HTTP app and the
  control socket. Nothing is fished back out of another part.
- One anyio task group owns the background tasks (retention, supervisor,
  janitor, control socket); an `AsyncExitStack` records how to stop each
  part as it starts, so shutdown runs in exactly reverse order: the control
  socket first (its clients are closed, the socket file removed), the HTTP
  site (no new requests; in-flight ones get `shutdown_grace`), then the
  sinks, then the store drains its writes and closes.
- SIGINT/SIGTERM set the stop event; `run()` returns normally, so the CLI
  exits 0. A second signal while stopping is ignored: shutdown is bounded by
  its own timeouts.
- An exclusive lock on `{data_dir}/daemon.lock` keeps a second daemon off the
  same log; failures while starting (lock, port, store, socket) become one
  `StartupError` line and exit code 1 in the CLI: the store raises only the
  errors `storage/base.py` defines (`StoreOpenError`, `StoreUnavailable`:
  an unreachable JetStream names its servers; `StoreReplaced`: streams this
  data dir's daemon used are gone or were created anew, unless started with
  `--accept-new-streams`), so nothing here names a backend
  (`storage/factory.py` chooses it).
- A store several daemons may share has `leases`: then an `Ownership`
  balancer decides which integrations this daemon delivers, built with
  everything it reads (the supervisor's sinks, the held-lease table the
  supervisor reads, the report of figures it announces), and the webhook
  client's User-Agent names the instance.
- At start the soft open-file limit is raised to the hard one and the HTTP
  connection cap fitted within it (`http_server.connection_limits`), so
  descriptors run out for neither HTTP clients nor anything else.
- `{data_dir}/runtime.json` (runtime.py) says where the running daemon listens
  (its port may be 0 in the config) and where its control socket is, both
  absolute; it is removed on a clean stop.
- A generated API token is saved only once the daemon has started (port
  bound, control socket up), so a failed start leaves no token behind; the
  webhook signing secrets are registered with the log redactor before
  anything can log.
- One `StatusSampler` serves the control socket and `/metrics`; readiness
  (`/readyz`) is set once everything has started and cleared when stopping.
  Then the API's request validators are built in a worker thread (the
  spec's YAML and its schemas, ~0.1-0.2 s), so the first API request does
  not pay for them and start-up does not wait for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import anyio
import anyio.to_thread
from aiohttp import web

from .. import __version__
from ..config import Config
from ..logs import kv
from ..runtime import RuntimeInfo, remove_runtime, runtime_file, write_runtime
from ..schemas.validation import warm as warm_validators
from ..sinks.base import SinkEnv
from ..sinks.registry import SINK_TYPES
from ..sinks.signing import register_secrets
from ..sinks.ssrf import guarded_connector_args
from ..storage.base import StoreOpenError, StoreReplaced, StoreUnavailable
from ..storage.factory import open_store, opening
from .app import build_app
from .auth import resolve_tokens
from .cluster import LocalReport
from .contracts import ChangeFeed
from .control import ControlServer, ControlSocketError
from .http_server import DaemonRunner, connection_limits
from .integrations import IntegrationService
from .metrics import DaemonMetrics, IngestStats, Readiness
from .ownership import HeldLeases, Ownership
from .replays import ReplayService
from .retention import retention_loop
from .status import StatusSampler
from .supervisor import Supervisor

log = logging.getLogger("eventstreamd.daemon")

SHUTDOWN_GRACE = 5.0
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


def _instance_token(data_dir: Path) -> str:
    """A random name for this data dir, kept in it: leases carry it, so a daemon restarted
    on the same (locked) data dir may take its predecessor's leases at once."""
    path = data_dir / "instance_token"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = uuid.uuid4().hex
        path.write_text(token + "\n")
    return token


class StartupError(Exception):
    """The daemon cannot start; the message is one line for the user."""


@contextlib.contextmanager
def _starting(what: str) -> Iterator[None]:
    try:
        yield
    except StoreReplaced as exc:  # says itself what happened and what to do
        raise StartupError(str(exc)) from exc
    except (OSError, RuntimeError, ControlSocketError, StoreOpenError,
            StoreUnavailable) as exc:
        raise StartupError(f"cannot {what}: {exc}") from exc


def http_session(config: Config, instance: str | None = None) -> aiohttp.ClientSession:
    """One keep-alive client for every webhook sink and retry (no global connection cap:
    each integration's window bounds its own requests). `instance` names this daemon
    when several may deliver, so the receiver's logs can tell which one sent."""
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, keepalive_timeout=30,
        **guarded_connector_args(config.security.block_targets))
    agent = f"eventstreamd/{__version__}"
    if instance is not None:
        agent += f" (instance {instance})"
    return aiohttp.ClientSession(connector=connector, headers={"User-Agent": agent})


class Daemon:
    def __init__(self, config: Config, *, accept_new_streams: bool = False) -> None:
        self.config = config
        self.accept_new_streams = accept_new_streams
        self._stop = anyio.Event()
        self.info: RuntimeInfo | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[RuntimeInfo], None] | None = None) -> None:
        config = self.config
        # Raises the open-file limit, which the HTTP connection cap is derived from.
        limits = connection_limits(config.server)
        register_secrets(config.webhook.signing_secrets)
        readiness = Readiness()
        async with contextlib.AsyncExitStack() as stack:
            with _starting(f"open the store in {config.data_dir}"):
                stack.callback(os.close, _lock_data_dir(config.data_dir))
            with _starting(opening(config)):
                store = await stack.enter_async_context(open_store(
                    config, SINK_TYPES, accept_new_streams=self.accept_new_streams))
            shared = store.leases  # several daemons may deliver from this store
            instance = config.jetstream.instance_name()
            with _starting("set up the API token"):
                tokens, generated = resolve_tokens(config)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs before the group exits
            tg.start_soon(self._watch_signals, name="signals")
            tg.start_soon(
                retention_loop, store, config.storage.retention, config.storage.retention_check,
                name="retention",
            )

            session = await stack.enter_async_context(http_session(
                config, instance if shared is not None else None))
            env = SinkEnv(config=config, session=session, spool_root=config.data_dir / "spool")
            changes = ChangeFeed()
            service = IntegrationService(store, config, changes, env)
            # Deliver only what we hold leases of, when others may deliver too.
            held = HeldLeases()
            supervisor = Supervisor(env, store, changes, on_completed=service.complete,
                                    on_gave_up=service.auto_stop,
                                    on_replay_completed=ReplayService(service).complete,
                                    leases=held if shared is not None else None)
            ownership = None
            if shared is not None:
                with _starting(f"keep the instance token in {config.data_dir}"):
                    token = _instance_token(config.data_dir)
                ownership = Ownership(shared, store, changes, held, sinks=supervisor,
                                      report=LocalReport(supervisor), instance=instance,
                                      ttl=config.jetstream.lease_ttl, token=token)
                await tg.start(ownership.run)
                # Runs after the supervisor's shutdown (the stack unwinds in reverse):
                # sinks flush under their leases, then the leases go to the others.
                stack.push_async_callback(ownership.close)
            await tg.start(supervisor.run)
            stack.push_async_callback(supervisor.shutdown)
            tg.start_soon(service.run_janitor, name="janitor")
            sampler = StatusSampler(store, supervisor, config, ownership=ownership)
            metrics = DaemonMetrics(store, supervisor, sampler, IngestStats(), readiness)

            runner = DaemonRunner(
                build_app(config, store, tokens, service, metrics),
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
            # Registered after the supervisor, so it stops before it: no client acts
            # on a stopping sink.
            control = ControlServer(config.control_socket, service, sampler,
                                    idle_timeout=config.control.idle_timeout)
            with _starting("open the control socket"):
                await tg.start(control.run)
            stack.push_async_callback(control.stop)
            self.info = RuntimeInfo(
                pid=os.getpid(),
                url=f"http://{_url_host(config.server.host)}:{port}",
                port=port,
                control_socket=str(config.control_socket),
            )
            if generated is not None:
                with _starting("save the generated API token"):
                    generated.save()
            runtime_path = runtime_file(config)
            write_runtime(runtime_path, self.info)
            stack.callback(remove_runtime, runtime_path)
            readiness.started = True
            # The API's validators are built now, beside the first requests, not by the
            # first request that needs one (off the loop: it is YAML and schemas).
            tg.start_soon(anyio.to_thread.run_sync, warm_validators, name="warm-validators")
            # What start-up made (modules, the app, clients) lives as long as the daemon:
            # out of the cyclic collector's reach, a full collection scans only what
            # requests create. Measured: full passes of 25-45 ms before, each a stall
            # every publish and delivery waits behind.
            gc.freeze()
            log.info("eventstreamd listening", extra=kv(
                url=self.info.url, data_dir=str(config.data_dir), head=store.head,
                config=config.source,
            ))
            if on_ready is not None:
                on_ready(self.info)
            await self._stop.wait()
            readiness.stopping = True
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

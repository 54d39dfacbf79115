"""The supervisor: one sink task per running integration, kept in line with the store.

Decisions:
- The store is the truth. `integration_changed(id)` (called by the API after
  every committed change) only marks the id dirty and wakes the reconcile
  task, which re-reads the record and starts, stops or restarts that sink, so
  changes take effect at once and the API never waits on delivery.
- A sink is restarted when its delivery settings change (target, filter,
  dates); status flips start and stop it. Stopping is graceful (see
  `SinkLoop`) and runs in the background so one slow stop never delays
  another integration.
- A sink that crashes is logged with its traceback, recorded in the
  integration log, and restarted with exponential backoff (1 s doubling to
  60 s) — never silently gone.
- A temporary integration that delivered its whole range is marked stopped
  and done, and deleted `webhook.temporary_delete_after` later by a janitor
  that reads the stored stop time, so the deletion survives a restart.
- One aiohttp ClientSession (keep-alive, no global connection cap) serves
  every webhook sink and the rejected-event `_retry` endpoint.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
from anyio.abc import TaskGroup, TaskStatus
from botocore.exceptions import BotoCoreError, ClientError

from .. import __version__
from ..config import Config
from ..logs import kv
from ..sinks.journal import add_log
from ..sinks.loop import Pipeline, SinkLoop, SinkStats
from ..sinks.s3 import S3Pipeline, describe_error, upload_single
from ..sinks.ssrf import guarded_connector_args
from ..sinks.webhook import WebhookPipeline, WebhookTarget, encode_body
from ..storage.lmdb_store import LmdbStore
from ..timeutil import format_utc, now_utc
from .contracts import DeliveryFailed
from .integrations import register_secrets

log = logging.getLogger("eventstreamd.supervisor")

CRASH_BACKOFF_INITIAL = 1.0
CRASH_BACKOFF_MAX = 60.0
JANITOR_EVERY = 1.0
S3_STOP_GRACE = 20.0  # an open file's last upload at stop; after it, it is rebuilt next start
# Fields whose change restarts a running sink; status, stop time and the
# `done` flag are lifecycle, not delivery settings.
_DELIVERY_FIELDS = ("incarnation", "integration_type", "starts_at", "ends_at",
                    "filter_conditions", "callback_parameters", "s3_parameters")


def delivery_settings(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(repr(record.get(f)) for f in _DELIVERY_FIELDS)


@dataclass
class SinkHandle:
    integration_id: str
    settings: tuple[Any, ...]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    loop: SinkLoop | None = None
    stop_event: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)
    crashes: int = 0
    # Outlives each run of the loop: a crash-looping sink shows its failures.
    stats: SinkStats = field(default_factory=SinkStats)
    restart_at: float | None = None  # wall clock of the next start after a crash

    @property
    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    def request_stop(self) -> None:
        self.stop_event.set()
        if self.loop is not None:
            self.loop.request_stop()


class Supervisor:
    def __init__(self, config: Config, store: LmdbStore, clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.clock = clock
        self.session: aiohttp.ClientSession | None = None
        self.handles: dict[str, SinkHandle] = {}
        self._dirty: set[str] = set()
        self._wake = anyio.Event()
        self._tg: TaskGroup | None = None
        self._shutting_down = False

    # ------------------------------------------------------------ SinkControl

    def integration_changed(self, integration_id: str) -> None:
        self._dirty.add(integration_id)
        self._wake.set()

    async def retry_rejected(self, record: dict[str, Any], entry: dict[str, Any]) -> None:
        if entry.get("deliverable") is False:
            raise DeliveryFailed(f"this event cannot be delivered: {entry.get('reason')}")
        if record.get("s3_parameters"):
            await self._retry_s3(record["s3_parameters"], entry)
            return
        assert self.session is not None
        target = WebhookTarget(self.session, record["callback_parameters"],
                               self.config.webhook.timeout, self.config.security.block_targets)
        result = await target.attempt(entry.get("event_id", entry["id"]),
                                      encode_body(entry["event"]))
        if result.outcome == "delivered":
            return
        if result.outcome == "rejected":
            raise DeliveryFailed(f"the receiver rejected the event again (HTTP 400): "
                                 f"{result.reason}")
        raise DeliveryFailed(f"delivery failed: {result.reason}")

    async def _retry_s3(self, params: dict[str, Any], entry: dict[str, Any]) -> None:
        try:
            await upload_single(params, self.config.s3.endpoint_url,
                                self.config.webhook.timeout, entry["event"])
        except ValueError as exc:
            raise DeliveryFailed(f"this event cannot be delivered: {exc}") from None
        except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
            cause, status = describe_error(exc)
            code = f" (HTTP status code {status})" if status is not None else ""
            raise DeliveryFailed(f"upload to s3://{params['bucket']} failed: {cause}{code}") \
                from None

    # -------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=30,
            **guarded_connector_args(self.config.security.block_targets))
        headers = {"User-Agent": f"eventstreamd/{__version__}"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session, \
                anyio.create_task_group() as tg:
            self.session, self._tg = session, tg
            for record in self.store.list_integrations():
                register_secrets(record)
                self.integration_changed(record["id"])
            tg.start_soon(self._reconcile_forever, name="supervisor:reconcile")
            tg.start_soon(self._janitor_forever, name="supervisor:janitor")
            task_status.started()
            await anyio.sleep_forever()

    async def shutdown(self) -> None:
        """Stop every sink gracefully (bounded), then the supervisor's own tasks."""
        self._shutting_down = True
        for handle in list(self.handles.values()):
            handle.request_stop()
        grace = max(self.config.webhook.timeout + 1.0, S3_STOP_GRACE) + 1.0
        with anyio.move_on_after(grace):
            for handle in list(self.handles.values()):
                await handle.finished.wait()
        for handle in list(self.handles.values()):
            handle.scope.cancel()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # -------------------------------------------------------------- reconcile

    async def _reconcile_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            dirty, self._dirty = self._dirty, set()
            for integration_id in sorted(dirty):
                await self._reconcile(integration_id)

    async def _reconcile(self, integration_id: str) -> None:
        if self._shutting_down:
            return
        record = self.store.get_integration(integration_id)
        handle = self.handles.get(integration_id)
        wanted = (record is not None and record.get("status") == "running"
                  and not record.get("done"))
        if record is not None:
            register_secrets(record)
        if handle is not None:
            if handle.stop_requested:
                return  # its end marks the id dirty again, and we look once more then
            if not wanted or handle.settings != delivery_settings(record):
                assert self._tg is not None
                self._tg.start_soon(self._stop_sink, handle, name=f"stop:{integration_id}")
            return
        if wanted:
            assert record is not None and self._tg is not None
            handle = SinkHandle(integration_id, delivery_settings(record))
            self.handles[integration_id] = handle
            self._tg.start_soon(self._supervise, handle, name=f"sink:{integration_id}")

    async def _stop_sink(self, handle: SinkHandle) -> None:
        """Graceful stop, bounded: cancelled outright when the grace period runs out."""
        handle.request_stop()
        with anyio.move_on_after(max(self.config.webhook.timeout + 1.0, S3_STOP_GRACE) + 1.0):
            await handle.finished.wait()
        if not handle.finished.is_set():
            log.warning("sink did not stop in time; cancelling it",
                        extra=kv(integration=handle.integration_id))
            handle.scope.cancel()

    async def _supervise(self, handle: SinkHandle) -> None:
        integration_id = handle.integration_id
        try:
            with handle.scope:
                while not handle.stop_requested:
                    record = self.store.get_integration(integration_id)
                    if record is None:
                        return
                    try:
                        handle.loop = self._build_loop(record, handle.stats)
                        if handle.stop_requested:
                            return
                        log.info("sink started", extra=kv(integration=integration_id))
                        outcome = await handle.loop.run()
                    except Exception as exc:
                        handle.crashes += 1
                        delay = min(CRASH_BACKOFF_MAX,
                                    CRASH_BACKOFF_INITIAL * 2 ** (handle.crashes - 1))
                        reason = (f"Delivery task crashed ({type(exc).__name__}: {exc}); "
                                  f"restarting in {delay:g}s.")
                        handle.stats.record_failure(reason, self.clock())
                        handle.restart_at = self.clock() + delay
                        log.exception("sink crashed", extra=kv(
                            integration=integration_id, restart_in=delay))
                        with contextlib.suppress(Exception):
                            await add_log(self.store, integration_id, record.get("incarnation"),
                                          "sink_crashed", reason)
                        with anyio.move_on_after(delay):
                            await handle.stop_event.wait()
                        handle.restart_at = None
                        continue
                    if outcome == "completed":
                        try:
                            await self._complete(record)
                        except Exception:
                            # Not marked done: the next start finds the range delivered
                            # and completes again.
                            log.exception("could not mark the integration completed",
                                          extra=kv(integration=integration_id))
                    log.info("sink stopped", extra=kv(integration=integration_id,
                                                      outcome=outcome))
                    return
        finally:
            if self.handles.get(integration_id) is handle:
                del self.handles[integration_id]
            handle.finished.set()
            # Look again: the integration may want a sink with new settings now.
            self.integration_changed(integration_id)

    def _build_loop(self, record: dict[str, Any], stats: SinkStats) -> SinkLoop:
        webhook = self.config.webhook
        if record.get("callback_parameters"):
            assert self.session is not None
            target = WebhookTarget(self.session, record["callback_parameters"], webhook.timeout,
                                   self.config.security.block_targets)
            pipeline: Pipeline = WebhookPipeline(target, webhook.retry_initial, webhook.retry_max,
                                                 webhook.max_in_flight)
            grace = webhook.timeout + 1.0
        else:
            pipeline = S3Pipeline(
                store=self.store, integration_id=record["id"], params=record["s3_parameters"],
                endpoint_url=self.config.s3.endpoint_url,
                rotate_interval=self.config.s3.rotate_interval,
                rotate_size=self.config.s3.rotate_size,
                retry_initial=webhook.retry_initial, retry_max=webhook.retry_max,
                timeout=webhook.timeout,
                spool_dir=self.config.data_dir / "spool" / record["id"],
            )
            grace = S3_STOP_GRACE
        return SinkLoop(
            store=self.store, record=record, pipeline=pipeline,
            stop_grace=grace, clock=self.clock, stats=stats,
        )

    async def _complete(self, started: dict[str, Any]) -> None:
        """Mark a temporary integration done — only if it is still the one that ran, running."""
        integration_id = started["id"]
        now_ms = int(self.clock() * 1000)
        reason = (f"All events up to {started.get('ends_at')} were sent; stopped automatically. "
                  f"Deleted in {self.config.webhook.temporary_delete_after:g}s.")
        created_at = format_utc(now_utc())

        def job(txn: Any) -> bool:
            current = self.store.txn_get_integration(txn, integration_id)
            if (current is None or current.get("incarnation") != started.get("incarnation")
                    or current.get("status") != "running"):
                return False  # deleted, replaced or stopped meanwhile: leave it be
            done = {**current, "status": "stopped", "done": True, "stopped_at_ms": now_ms}
            self.store.txn_put_integration(txn, done)
            self.store.txn_add_log(txn, integration_id, "integration_completed", reason,
                                   created_at)
            return True

        if await self.store.write(job):
            log.info("temporary integration completed", extra=kv(integration=integration_id))

    # ---------------------------------------------------------------- janitor

    async def _janitor_forever(self) -> None:
        while True:
            try:
                await self.delete_expired_temporaries()
            except Exception:
                log.exception("janitor round failed; trying again")
            await anyio.sleep(JANITOR_EVERY)

    async def delete_expired_temporaries(self) -> list[str]:
        now_ms = int(self.clock() * 1000)
        after_ms = int(self.config.webhook.temporary_delete_after * 1000)
        deleted = []
        for record in self.store.list_integrations():
            stopped = record.get("stopped_at_ms")
            if record.get("done") and stopped is not None and now_ms - stopped >= after_ms:
                integration_id = record["id"]
                await self.store.write(
                    lambda txn, i=integration_id: self.store.txn_delete_integration(txn, i))
                log.info("completed temporary integration deleted",
                         extra=kv(integration=integration_id))
                deleted.append(integration_id)
        return deleted

    # ---------------------------------------------------------------- status

    def sink_status(self, integration_id: str) -> dict[str, Any] | None:
        handle = self.handles.get(integration_id)
        if handle is None:
            return None
        loop, stats = handle.loop, handle.stats
        return {
            "delivered": stats.delivered,
            "rejected": stats.rejected,
            "failures": stats.failures,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
            "cursor": (loop.durable_cursor or None) if loop is not None else None,
            "crashes": handle.crashes,
            # "crashed": waiting to restart after a crash (restart_in seconds from now).
            "state": "crashed" if handle.restart_at is not None else "running",
            "restart_in": (round(max(0.0, handle.restart_at - self.clock()), 1)
                           if handle.restart_at is not None else None),
            **(loop.pipeline.status() if loop is not None else {}),
        }

"""The log writer: the one owner of LMDB write transactions (group commit).

Decisions:
- LMDB allows one writer at a time and every commit costs an fsync, so all
  writes go through this one task and its one thread. Callers submit a *job* (a function of the
  write transaction) and await its result. The writer takes whatever jobs are
  waiting, runs them in one transaction in a worker thread, commits (LMDB's
  `sync=True` fsyncs on commit), and only then answers every waiting caller.
  While one commit runs the next batch gathers, so the commit rate adapts to
  the load: one event per request still shares fsyncs with its neighbours.
- A job that raises must not take its neighbours down with it: the batch is
  then aborted and re-run one job per transaction, so only the failing job
  fails (this keeps publish all-or-nothing per request when the map fills).
- Jobs touch only the transaction; in-memory state (the head) is updated from
  their results after the commit, so an aborted transaction leaves nothing
  behind.
- The queue is bounded: when it is full, submitters wait (backpressure).
- `stats.commits` counts committed transactions so tests can prove sharing
  without timing anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import anyio
import lmdb
from anyio.abc import TaskStatus

log = logging.getLogger("eventstreamd.writer")

# A write transaction; no transaction is opened with buffers=True, so values are bytes.
Txn: TypeAlias = "lmdb.Transaction[bytes]"
Job = Callable[[Txn], object]
T = TypeVar("T")

MAX_JOBS_PER_COMMIT = 512


@dataclass
class WriterStats:
    commits: int = 0
    jobs: int = 0


class WriterClosed(RuntimeError):
    """The writer has stopped; nothing more can be written."""


class LogWriter:
    def __init__(self, env: lmdb.Environment, *, max_pending: int = 4096) -> None:
        self._env = env
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]] | None] = asyncio.Queue(
            maxsize=max_pending
        )
        self._closed = False
        self._running = False
        self._done = anyio.Event()
        self.stats = WriterStats()
        # One dedicated thread runs every write transaction: cheaper to hand work to
        # than a pool (anyio.to_thread showed up in profiles), and LMDB's write
        # transactions always live on the same thread.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb-writer")

    async def submit(self, job: Callable[[Txn], T]) -> T:
        """Run `job(txn)` in the next group commit; return its result once durable."""
        if self._closed or not self._running:
            raise WriterClosed("the log writer is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        result: T = await future  # what `job` returned (the batch's futures hold any type)
        return result

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        task_status.started()
        try:
            stop = False
            while not stop:
                item = await self._queue.get()
                if item is None:
                    break
                batch = [item]
                while len(batch) < MAX_JOBS_PER_COMMIT:
                    try:
                        nxt = self._queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                # Not cancellable: a commit that started finishes, so no caller is
                # left unsure whether its write is durable.
                with anyio.CancelScope(shield=True):
                    outcomes = await asyncio.get_running_loop().run_in_executor(
                        self._thread, self._commit_batch, [j for j, _ in batch])
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._closed = True
            self._running = False
            self._fail_pending()
            self._thread.shutdown(wait=False)
            self._done.set()

    async def close(self) -> None:
        """Finish what is queued, then stop; returns once stopped. Safe to call twice."""
        if not self._running:
            return
        if not self._closed:
            self._closed = True
            await self._queue.put(None)
        await self._done.wait()

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not None and not item[1].done():
                item[1].set_exception(WriterClosed("the log writer stopped"))

    def _commit_batch(self, jobs: list[Job]) -> list[tuple[bool, Any]]:
        try:
            with self._env.begin(write=True) as txn:
                results = [job(txn) for job in jobs]
        except Exception as exc:
            if len(jobs) == 1:
                return [(False, exc)]
            # One job failed the whole transaction: run each alone so only it fails.
            return [self._commit_batch([job])[0] for job in jobs]
        self.stats.commits += 1
        self.stats.jobs += len(jobs)
        return [(True, r) for r in results]

"""Retry until done or stopped: the one retry loop every sink uses, with the spec's reason.

Decisions:
- An attempt returns either its result (done: delivered, or final in some other
  way the caller decides) or a `Failure` (retry). The loop records the failure
  on the sink (status, `last_error`), logs it (INFO per retry, the first one at
  WARNING, so a flapping receiver does not flood the log), writes
  `retry_triggered` with the reason worded as the spec's examples word it
  (`Request to URL <url> failed. Reason: <cause> (HTTP status code <code>).
  Payload: <what was sent, shortened>`), and waits: exponential backoff with
  full jitter, `Retry-After` honoured as a lower bound ("0" must not become a
  tight loop). A stop request ends the wait and the loop (`None`); so does a
  lease this daemon can no longer count on, checked before every attempt
  (`SinkContext.may_deliver`), so a daemon that was frozen past its lease
  sends nothing once it runs again.
- After a run of failures, the attempt that succeeds logs one INFO line saying
  the target recovered and after how many attempts.
- `pace`, when given, is awaited before every attempt: it waits for the
  attempt's slot (a rate limit, `pacing.py`) and says False when the sink
  stopped meanwhile; the lease is checked after it, right before sending.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ..logs import kv, shorten
from .backoff import backoff_delay
from .base import SinkContext

log = logging.getLogger("eventstreamd.delivery")

PAYLOAD_EXCERPT = 256
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt: the cause in words, the HTTP status when one came back."""

    cause: str
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float  # the first backoff's ceiling, seconds; doubles per retry
    cap: float  # the ceiling's limit


def failure_reason(url: str, failure: Failure, payload: str) -> str:
    """The `retry_triggered` reason, worded as the spec's examples word it."""
    code = failure.status if failure.status is not None else "none"
    return (f"Request to URL {url} failed. Reason: {failure.cause} "
            f"(HTTP status code {code}). Payload: {shorten(payload, PAYLOAD_EXCERPT)}")


async def retry_until_stopped(ctx: SinkContext, attempt: Callable[[], Awaitable[T | Failure]],
                              *, url: str, payload: Callable[[], str],
                              policy: RetryPolicy,
                              pace: Callable[[], Awaitable[bool]] | None = None) -> T | None:
    """Run `attempt` until it returns something other than a Failure; None if stopped."""
    failures = 0
    while True:
        if pace is not None and not await pace():
            return None
        if not ctx.may_deliver():  # a lease lost (or past its deadline): not ours to send
            return None
        result = await attempt()
        if not isinstance(result, Failure):
            if failures:
                log.info("delivery recovered", extra=kv(
                    integration=ctx.integration.id, url=url, attempts=failures + 1))
            return result
        failures += 1
        reason = failure_reason(url, result, payload())
        status = f" (HTTP {result.status})" if result.status is not None else ""
        ctx.record_failure(reason, cause=f"{result.cause}{status}")
        log.log(logging.WARNING if failures == 1 else logging.INFO,
                "delivery failed, will retry", extra=kv(
                    integration=ctx.integration.id, url=url, attempt=failures,
                    cause=result.cause, status=result.status))
        await ctx.add_log("retry_triggered", reason)
        delay = max(result.retry_after or 0.0,
                    backoff_delay(failures, policy.initial, policy.cap))
        if await ctx.sleep_unless_stopping(delay):
            return None

"""The webhook delivery controls on LMDB: strict order against the bare client at
concurrency 1, per-key lanes (100 keys) against the same daemon unordered, and how
exactly `max_rate` holds."""

from __future__ import annotations

from typing import Any

from ..common import STORES
from ..context import Ctx
from ..processes import ReceiverProc
from ..rows import Row, within_row
from .shared import bare_delivery_rate, delivered_note, delivered_row, published_catch_up


def _catch_up(ctx: Ctx, scenario: str, receiver: ReceiverProc, per: int,
              controls: dict[str, Any] | None) -> tuple[dict[str, Any], float, dict[str, float]]:
    """One integration (`controls` in its callback_parameters, `max_in_flight` 8) catches
    up on `per` stored events: the receiver's stats, seconds, busyness."""
    return published_catch_up(ctx, scenario, receiver, [("bench-0", f"{receiver.url}/hook/0")],
                              per, 8, controls)


def webhook_strict(ctx: Ctx) -> list[Row]:
    """`ordered` without a key (`max_in_flight` left at 8: strict order sends one request
    at a time anyway), against the bare client at concurrency 1."""
    scenario, per = "webhook-ordered-strict", ctx.size(5_000, 600)
    receiver = ReceiverProc(ctx.children)
    try:
        ctx.log(f"  baseline: bare aiohttp client, {per:,} posts, 1 at a time")
        baseline, base_busy = bare_delivery_rate(
            ctx, receiver, "webhook_baseline",
            {"urls": [f"{receiver.url}/hook/0"], "count": per, "concurrency": 1}, per)
        stats, seconds, busy = _catch_up(ctx, scenario, receiver, per, {"ordered": True})
    finally:
        receiver.stop()
    busy.update({f"baseline_{k}": v for k, v in base_busy.items()})
    return [delivered_row(scenario, "delivered events/s", stats, per, seconds, baseline, 0.9,
                          busy)]


def webhook_keyed(ctx: Ctx) -> list[Row]:
    """Per-key lanes over 100 store ids, against the same daemon unordered (8 in flight):
    the `webhook-inflight-8` figure, measured in the same scenario."""
    scenario, per = "webhook-ordered-keyed", ctx.size(20_000, 2_000)
    receiver = ReceiverProc(ctx.children)
    try:
        plain, plain_seconds, plain_busy = _catch_up(ctx, f"{scenario}-unordered", receiver,
                                                     per, None)
        keyed, seconds, busy = _catch_up(ctx, scenario, receiver, per,
                                         {"ordered": True, "ordering_key": "store_id"})
    finally:
        receiver.stop()
    baseline = plain["count"] / plain_seconds if plain["count"] else None
    row = delivered_row(scenario, "delivered events/s", keyed, per, seconds, baseline, 0.8,
                        {**busy, **{f"unordered_{k}": v for k, v in plain_busy.items()}})
    row.note = (f"{STORES} keys; {row.note}; unordered: "
                f"{delivered_note(plain, per, plain_seconds)}")
    return [row]


def webhook_max_rate(ctx: Ctx) -> list[Row]:
    """`max_rate`: the delivered rate from the first to the last arrival, against the
    limit; met within 5 % either way."""
    scenario, limit = "webhook-max-rate", 200.0
    per = int(limit * ctx.size(15, 3))
    receiver = ReceiverProc(ctx.children)
    try:
        stats, seconds, busy = _catch_up(ctx, scenario, receiver, per, {"max_rate": limit})
    finally:
        receiver.stop()
    value = None
    if stats["count"] > 1 and stats["first_ns"] and stats["last_ns"]:
        value = (stats["count"] - 1) / ((stats["last_ns"] - stats["first_ns"]) / 1e9)
    return [within_row(scenario, "delivered events/s (first to last arrival)", "events/s",
                       value, limit, 0.05, f"limit {limit:g}/s; "
                       f"{delivered_note(stats, per, seconds)}", busy)]

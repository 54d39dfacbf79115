"""The parts of replays, in-process and clock-free: a replay giving way to live traffic
for the integration's rate and for the event loop's time, two limiters in series, the
count saved with a replay's cursor, its S3 key template, and how a range splits into
buckets."""

from __future__ import annotations

import pytest

from eventstreamd.model import Fence, ReplayProgress, StoredEvent
from eventstreamd.sinks.pacing import (
    LIVE_RECENT,
    LOOP_PERIOD,
    LOOP_TARGET,
    REPLAY_RATE_MIN,
    REPLAY_RATE_START,
    LiveActivity,
    LoopShare,
    Pace,
    RateLimiter,
)
from eventstreamd.sinks.replay import ReplayBook
from eventstreamd.sinks.s3_keys import DEFAULT, FileNaming, KeyTemplate, TemplateRefused
from eventstreamd.storage.counts import BUCKET, BucketCache, bucket_start, split
from tests.test_sink_loop import FakeClock


def event(seq: int) -> StoredEvent:
    return StoredEvent(seq, f"e{seq}", "t", "order.created", 0, b"{}")


# -------------------------------------------------------------------- pacing


def test_a_replay_takes_only_slots_live_traffic_left_free() -> None:
    clock = FakeClock(100.0)
    limiter = RateLimiter(clock)
    limiter.configure(10)
    assert limiter.spare() == 0.0  # free now: taken
    assert limiter.spare() == pytest.approx(0.1)  # the next one is not free yet
    # A live delivery books the next slot ahead of the waiting replay ...
    assert limiter.reserve() == pytest.approx(0.1)
    clock.now += 0.1
    # ... so when the replay looks again, that slot is gone: it waits one more interval.
    assert limiter.spare() == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.spare() == 0.0
    limiter.configure(None)
    assert limiter.spare() == 0.0 and limiter.spare() == 0.0


async def test_a_replay_waits_for_its_own_rate_then_the_integrations() -> None:
    clock = FakeClock(100.0)
    slept: list[float] = []

    async def sleep(seconds: float) -> bool:
        slept.append(seconds)
        clock.now += seconds
        return False

    shared, own = RateLimiter(clock), RateLimiter(clock)
    shared.configure(100)
    own.configure(2)
    pace = Pace(shared, gives_way=True, own=own)
    assert await pace.wait(sleep) and slept == []
    assert await pace.wait(sleep)
    assert slept == [pytest.approx(0.5)]  # its own 2/s is the tighter one
    live = Pace(shared)
    for _ in range(100):
        shared.reserve()  # live traffic books a second of the shared rate ahead
    slept.clear()
    assert await pace.wait(sleep)
    assert sum(slept) == pytest.approx(0.5 + 0.5, abs=0.02)  # own slot, then the shared
    assert await live.wait(sleep)

    async def stopping(seconds: float) -> bool:
        return True

    assert not await pace.wait(stopping)


def test_replays_beside_live_traffic_slow_down_while_the_loop_is_busy() -> None:
    clock, cpu = FakeClock(100.0), FakeClock(5.0)
    share = LoopShare(clock, cpu)
    period = LOOP_PERIOD * 1.01  # a little more: never short of a period by rounding
    integration = LiveActivity(clock, also=share.live)
    # No live traffic: unpaced, however busy the loop is.
    for _ in range(10):
        clock.now += period
        cpu.now += period
        assert share.reserve() == 0.0
    assert share.rate == REPLAY_RATE_START  # nothing learned while unpaced
    integration.note()  # an integration's live delivery is the daemon's live traffic
    assert share.live.running()
    assert share.reserve() == 0.0  # the first slot is free ...
    assert share.reserve() == pytest.approx(1 / REPLAY_RATE_START)  # ... then paced
    # The loop thread busy all the time: the rate falls with every period ...
    rates = []
    for _ in range(5):
        clock.now += period
        cpu.now += period
        integration.note()
        share.reserve()
        rates.append(share.rate)
    assert rates == sorted(rates, reverse=True) and rates[-1] < REPLAY_RATE_START / 3
    assert share.busy == pytest.approx(1.0)
    # ... never below the floor (a replay still moves) ...
    for _ in range(100):
        clock.now += period
        cpu.now += period
        integration.note()
        share.reserve()
    assert share.rate == REPLAY_RATE_MIN
    # ... and rises again once the loop has time to spare.
    for _ in range(10):
        clock.now += period
        cpu.now += period * LOOP_TARGET / 2
        integration.note()
        share.reserve()
    assert share.rate > REPLAY_RATE_MIN * 2
    # Live traffic over: unpaced again.
    clock.now += LIVE_RECENT + LOOP_PERIOD
    assert share.reserve() == 0.0 and share.reserve() == 0.0


async def test_a_replay_waits_for_the_loops_share_after_its_own_rate() -> None:
    clock, cpu = FakeClock(100.0), FakeClock(5.0)
    share = LoopShare(clock, cpu)
    share.live.note()
    slept: list[float] = []

    async def sleep(seconds: float) -> bool:
        slept.append(seconds)
        clock.now += seconds
        return False

    pace = Pace(None, gives_way=True, loop=share)
    for _ in range(3):
        assert await pace.wait(sleep)
    assert slept == [pytest.approx(1 / REPLAY_RATE_START)] * 2


# -------------------------------------------------------------- the count


class _Store:
    """What a ReplayBook writes to, in memory."""

    def __init__(self) -> None:
        self.saved: list[ReplayProgress] = []

    async def set_replay_progress(self, fence: Fence, replay_id: str,
                                  progress: ReplayProgress) -> bool:
        self.saved.append(progress)
        return True

    async def get_replay_progress(self, integration_id: str,
                                  replay_id: str) -> ReplayProgress | None:
        return self.saved[-1] if self.saved else None


async def test_the_count_saved_with_a_cursor_is_what_lies_before_it() -> None:
    store = _Store()
    book = ReplayBook(store, "a", "r1")  # type: ignore[arg-type]
    fence = Fence("a", "inc")
    assert await book.load_cursor() is None
    book.handed([event(s) for s in (3, 5, 8, 9)])  # a filter skipped the others
    book.handed([event(s) for s in (12, 13, 20)])
    assert book.delivered_before(3) == 0 and book.delivered_before(9) == 3
    assert book.delivered_before(100) == 7
    assert await book.save_cursor(fence, 9)
    book.committed(9)
    assert store.saved[-1] == ReplayProgress(9, 3)
    book.taken_back(13)  # the pipeline did not take 13 and 20: read again later
    assert book.delivered_before(100) == 5
    book.handed([event(s) for s in (13, 20)])
    assert await book.save_cursor(fence, 21)
    book.committed(21)
    assert store.saved[-1] == ReplayProgress(21, 7)
    # After a restart: the saved cursor and count, nothing counted twice.
    again = ReplayBook(store, "a", "r1")  # type: ignore[arg-type]
    assert await again.load_cursor() == 21 and again.delivered_before(30) == 7


# ---------------------------------------------------------- S3 keys, buckets


def test_a_replays_objects_get_a_folder_of_their_own() -> None:
    naming = FileNaming("events", "acme", 1_700_000_000.0, 10, 20)
    replay = DEFAULT.within("replay-ab12")
    assert replay.text == "{key_prefix}/{tenant}/replay-ab12/{timestamp}-data-{random}.export"
    assert replay.render(naming).startswith("events/acme/replay-ab12/1700000000000-data-")
    lake = KeyTemplate.parse("{key_prefix}/date={date}/{tenant}-{first_seq}").within("replay-x")
    assert lake.render(naming) == "events/date=2023-11-14/replay-x/acme-10"
    assert KeyTemplate.parse("{tenant}-{random}").within("replay-x").render(
        naming).startswith("replay-x/acme-")
    with pytest.raises(TemplateRefused):
        DEFAULT.within("replay x")


def test_a_range_splits_into_whole_buckets_and_two_edges() -> None:
    b1 = bucket_start(1)
    assert split(1, 1) == ([], range(0))
    assert split(1, BUCKET + 1) == ([], range(0, 1))
    assert split(5, b1 + 10) == ([(5, b1 + 10)], range(0))  # no whole bucket: one read
    assert split(5, 3 * BUCKET + 1) == ([(5, b1)], range(1, 3))
    assert split(b1, b1 + BUCKET + 7) == ([(b1 + BUCKET, b1 + BUCKET + 7)], range(1, 2))
    assert split(7, 9) == ([(7, 9)], range(0))


def test_the_bucket_cache_vouches_only_for_complete_buckets() -> None:
    cache = BucketCache(limit=2)
    cache.note(1, ["a"] * (BUCKET - 1))
    assert cache.complete(0) is None
    cache.note(BUCKET, ["b", "c", "c"])  # completes bucket 0, starts bucket 1
    assert cache.complete(0) == {"a": BUCKET - 1, "b": 1}
    assert cache.complete(1) is None
    cache.put(1, {"x": BUCKET})
    cache.note(BUCKET + 1, ["late"])  # noted after it was read whole: already in
    assert cache.complete(1) == {"x": BUCKET}
    cache.put(2, {"y": BUCKET})  # over the limit: the oldest goes
    assert cache.complete(0) is None and len(cache) == 2

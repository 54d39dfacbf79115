"""The parts of the per-integration delivery controls, in-process and clock-free: lanes,
the rate limiter's schedule, the window's hold limit, trace context, the stored formats,
the target's masking and rotation state, the signing state and the failure streak."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventstreamd import codec
from eventstreamd.config import Config, StorageConfig, WebhookConfig
from eventstreamd.model import NewEvent, StoredEvent
from eventstreamd.sinks import registry
from eventstreamd.sinks.lanes import NO_KEY, Lanes, OrderingKey, Unordered
from eventstreamd.sinks.pacing import RateLimiter
from eventstreamd.sinks.per_integration import PerIntegration
from eventstreamd.sinks.signing import SigningState
from eventstreamd.sinks.streak import FailureStreak
from eventstreamd.sinks.webhook import RequestHeaders, WebhookTarget, rotate_secret
from eventstreamd.sinks.window import DeliveryWindow
from eventstreamd.storage import records
from eventstreamd.storage.jetstream import events as js_events
from eventstreamd.trace import child_traceparent, parse_traceparent, trace_id
from tests.helpers.receiver import Receiver
from tests.helpers.signing import library_verifies, new_secret
from tests.helpers.wait import eventually
from tests.test_sink_loop import FakeClock, Harness, harness, receiver  # noqa: F401

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def event(seq: int, payload: Any = None, body: bytes | None = None) -> StoredEvent:
    raw = body if body is not None else orjson.dumps(
        {"tenant": "t", "name": "order.created", "published_at": "x", "payload": payload or {}})
    return StoredEvent(seq, f"e{seq}", "t", "order.created", 0, raw)


# ----------------------------------------------------------------------- lanes


def test_strict_lanes_hand_out_one_event_at_a_time_in_order() -> None:
    lanes = Lanes()
    for seq in (1, 2, 3):
        lanes.add(event(seq))
    first = lanes.take()
    assert first is not None and first.seq == 1
    assert lanes.take() is None  # the only lane is out
    assert lanes.done(first)
    second = lanes.take()
    assert second is not None and second.seq == 2 and len(lanes) == 1


def test_keyed_lanes_overlap_and_keep_each_key_in_order() -> None:
    lanes = Lanes(OrderingKey("order.id"))
    keys = ["a", "b", "a", None, "b", 1, "1"]
    for seq, key in enumerate(keys, start=1):
        lanes.add(event(seq, {"order": {"id": key}} if key is not None else {"other": 1}))
    out = [lanes.take() for _ in range(6)]
    taken = [e.seq for e in out if e is not None]
    # One per lane at once, lowest seq first: a, b, no-key, 1 and "1" (different JSON).
    assert taken == [1, 2, 4, 6, 7]
    first_a = next(e for e in out if e is not None and e.seq == 1)
    assert lanes.done(first_a)  # a's next (3) may go now
    following = lanes.take()
    assert following is not None and following.seq == 3
    assert lanes.take() is None  # b's next waits for 2


def test_ordering_key_values() -> None:
    key = OrderingKey("customer.id")
    assert key(event(1, {"customer": {"id": "c-1"}})) == b'"c-1"'
    assert key(event(1, {"customer": {"id": 7}})) == b"7"
    assert key(event(1, {"customer": {"id": None}})) == NO_KEY
    assert key(event(1, {"customer": "flat"})) == NO_KEY
    assert key(event(1, {})) == NO_KEY
    assert key(event(1, body=b"not json")) == NO_KEY


def test_unordered_is_a_fifo() -> None:
    fifo = Unordered()
    for seq in (3, 1, 2):
        fifo.add(event(seq))
    assert [fifo.take().seq for _ in range(3)] == [3, 1, 2]  # type: ignore[union-attr]
    assert fifo.take() is None


def test_a_window_may_hold_more_than_it_sends_never_more_than_it_may_leave_unsaved() -> None:
    window = DeliveryWindow(2, unsaved_limit=10, hold_limit=16)
    assert window.hold_limit == 10
    for seq in range(1, 10):
        window.dispatch(seq)
    assert not window.full
    window.dispatch(10)
    assert window.full and window.waits_for_cursor
    assert DeliveryWindow(8).hold_limit == 8


# ----------------------------------------------------------------- the limiter


def test_the_rate_limiter_spaces_slots_evenly() -> None:
    clock = FakeClock(100.0)
    limiter = RateLimiter(clock)
    assert limiter.reserve() == 0.0  # unlimited
    limiter.configure(20)
    waits = [limiter.reserve() for _ in range(60)]
    assert waits[0] == 0.0
    assert waits[-1] == pytest.approx(59 / 20)  # 60 requests take 2.95 s, burst of one
    assert all(b - a == pytest.approx(0.05) for a, b in itertools.pairwise(waits))
    clock.now += 10.0  # idle: no tokens saved up beyond the next slot
    assert limiter.reserve() == 0.0 and limiter.reserve() == pytest.approx(0.05)
    limiter.configure(None)
    assert limiter.reserve() == 0.0 and limiter.rate is None


def test_per_integration_values_are_new_for_a_new_incarnation() -> None:
    values = PerIntegration(RateLimiter)
    first = values.get("w1", "a")
    assert values.get("w1", "a") is first and values.peek("w1", "a") is first
    assert values.get("w1", "b") is not first and values.peek("w1", "a") is None
    values.forget("w1")
    assert values.peek("w1", "b") is None and len(values) == 0


# ---------------------------------------------------------------- trace context


def test_traceparent_parsing_follows_the_w3c_rules() -> None:
    stored = parse_traceparent(TRACEPARENT)
    assert stored is not None and len(stored) == 25
    assert trace_id(stored) == "4bf92f3577b34da6a3ce929d0e0e4736"
    child = child_traceparent(stored)
    assert child.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and child.endswith("-01")
    assert child.split("-")[2] != "00f067aa0ba902b7"
    # A later version is read by its first four fields and continued as 00.
    assert parse_traceparent("cc-" + TRACEPARENT[3:] + "-what-ever") == stored
    for bad in (None, "", "00", TRACEPARENT.upper(), TRACEPARENT + "-x",
                "ff" + TRACEPARENT[2:], "00-" + "0" * 32 + TRACEPARENT[35:],
                TRACEPARENT[:36] + "0" * 16 + "-01", TRACEPARENT.replace("-", "_"),
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"):
        assert parse_traceparent(bad) is None, bad


def test_stored_events_keep_their_trace_and_old_records_read_as_before() -> None:
    trace = parse_traceparent(TRACEPARENT)
    traced = NewEvent("id-1", "t", "order.created", b'{"a":1}', trace)
    plain = NewEvent("id-2", "t", "order.created", b'{"a":2}')
    # LMDB: flag bit 1; with a problem text too.
    back = records.decode_event(1, records.encode_event(traced, 5, "a problem"))
    assert (back.trace, back.problem, back.body, back.name) == (
        trace, "a problem", b'{"a":1}', "order.created")
    old = records.encode_event(plain, 5)  # what every earlier version wrote
    assert old[1] == 0 and records.decode_event(2, old).trace is None
    assert records.decode_event(2, old).body == b'{"a":2}'
    # JetStream: tag 2 with a trace, tag 1 (every earlier message) without.
    assert js_events.encode(plain)[0] == 1 and js_events.encode(traced)[0] == 2
    again = js_events.decode(3, 7, js_events.encode(traced))
    assert (again.trace, again.body, again.id, again.problem) == (trace, b'{"a":1}', "id-1",
                                                                  None)
    assert js_events.decode(4, 7, js_events.encode(plain)).trace is None
    cut = js_events.encode(traced)[:struct.calcsize(">BBBH") + 5 + 1 + 13 + 10]
    assert js_events.decode(5, 7, cut).problem is not None  # unreadable: set aside


# ------------------------------------------------------------- the target


SECRET, OTHER = new_secret(), new_secret()


def target(**fields: Any) -> WebhookTarget:
    return WebhookTarget("http://127.0.0.1:9/", **fields)


def test_secrets_are_masked_and_private_fields_never_shown() -> None:
    rotated = rotate_secret(target(signing_secret=SECRET, headers=(("X-Key", "value-of-x-key"),)),
                            OTHER, 1_000, Config())
    assert isinstance(rotated, WebhookTarget)
    assert rotated.previous_signing_secrets == (SECRET,) and rotated.signing_version == 1
    shown = codec.target_to_api(rotated)
    assert shown == {"callback_url": "http://127.0.0.1:9/", "signing_secret": "wh***",
                     "headers": {"X-Key": "va***"}}
    stored = rotated.to_dict()
    assert WebhookTarget.from_dict(stored) == rotated  # the store keeps everything
    # A request cannot set private fields.
    from_api = codec.target_from_api(registry.SINK_TYPES, {"callback_parameters": stored})
    assert isinstance(from_api, WebhookTarget) and from_api.previous_signing_secrets == ()
    for secret in (SECRET, OTHER, OTHER.removeprefix("whsec_"), "value-of-x-key"):
        assert secret in rotated.secrets()


def test_a_patch_sending_masks_back_keeps_secrets_and_the_rotation() -> None:
    current = rotate_secret(target(signing_secret=SECRET, api_key="api-key-0123456789",
                                   headers=(("X-Key", "value-of-x-key"), ("X-B", "b"))),
                            OTHER, 1_000, Config())
    shown = codec.target_to_api(current)
    sent = WebhookTarget.from_dict({**shown, "headers": {**shown["headers"], "X-B": "new"}})
    kept = codec.keep_masked_secrets(current, sent)
    assert isinstance(kept, WebhookTarget)
    assert kept.signing_secret == OTHER and kept.api_key == "api-key-0123456789"
    assert kept.headers == (("X-Key", "value-of-x-key"), ("X-B", "new"))
    assert kept.previous_signing_secrets == (SECRET,) and kept.signing_version == 1
    # A new secret through PATCH ends the overlap, and counts as a change.
    changed = codec.keep_masked_secrets(current, WebhookTarget.from_dict(
        {**shown, "signing_secret": new_secret()}))
    assert isinstance(changed, WebhookTarget)
    assert changed.previous_signing_secrets == () and changed.signing_version == 2


def test_rotation_state_expires_and_restarts_no_sink() -> None:
    config = Config(webhook=WebhookConfig(rotation_overlap=10.0))
    current = target(signing_secret=SECRET, max_rate=5.0)
    rotated = rotate_secret(current, OTHER, 1_000, config)
    assert rotated.previous_signing_until_ms == 11_000
    assert rotated.sink_settings() == current.sink_settings()  # signing is read live
    assert rotated.settled(10_999) is rotated
    assert rotated.settled(11_000).previous_signing_secrets == ()
    assert target(max_rate=5.0).sink_settings() != target(max_rate=6.0).sink_settings()
    # Without an overlap the previous secret stops at once.
    assert rotate_secret(current, OTHER, 1_000, Config(
        webhook=WebhookConfig(rotation_overlap=0.0))).previous_signing_secrets == ()
    # An integration on the global secrets rotates away from those.
    on_global = rotate_secret(target(), OTHER, 1_000, Config(
        webhook=WebhookConfig(signing_secret=SECRET)))
    assert on_global.previous_signing_secrets == (SECRET,)


def test_the_signing_state_follows_versions_and_the_clock() -> None:
    clock = FakeClock(1_000.0)
    state = SigningState(clock)
    assert state.signer() is None
    assert state.update((SECRET,), (), None, 0)
    assert state.update((OTHER,), (SECRET,), 1_010_000, 1)
    assert not state.update((SECRET,), (), None, 0)  # an older record cannot undo it
    body = b"{}"
    headers = RequestHeaders(target(), state)("evt-1", body)
    assert library_verifies(OTHER, body, headers) and library_verifies(SECRET, body, headers)
    clock.now = 1_010.0  # the overlap is over
    headers = RequestHeaders(target(), state)("evt-1", body)
    assert library_verifies(OTHER, body, headers)
    assert not library_verifies(SECRET, body, headers)


def test_request_headers_carry_the_controls() -> None:
    trace = parse_traceparent(TRACEPARENT)
    headers = RequestHeaders(target(api_key="k-1", headers=(("X-A", "1"),)), None,
                             {"Eventstreamd-Replay": "r-1"})("evt-9", b"{}", trace)
    assert headers["X-A"] == "1" and headers["Authorization"] == "Bearer k-1"
    assert headers["Idempotency-Key"] == "evt-9" and headers["Eventstreamd-Replay"] == "r-1"
    assert headers["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "webhook-signature" not in headers


# ------------------------------------------------------------- the streak


def test_a_failure_streak_lasts_until_an_answer_and_not_before_the_last_start() -> None:
    clock = FakeClock(1_000.0)
    streak = FailureStreak(60.0, started_at_ms=500_000, clock=clock)
    assert not streak.failed()
    assert streak.since_ms == 1_000_000
    clock.now += 59
    assert not streak.failed()
    clock.now += 1
    assert streak.failed()
    assert streak.describe() == "60s (since 1970-01-01T00:16:40.000Z)"
    clock.now += 5 * 86_400
    assert streak.describe().startswith("5d (since")
    clock.now -= 5 * 86_400
    streak.succeeded()
    assert streak.since_ms is None and not streak.failed()
    never = FailureStreak(0.0, None, clock)
    never.failed()
    clock.now += 10**9
    assert not never.failed()
    # A saved streak carries over, unless it began before the last start.
    carried = FailureStreak(60.0, started_at_ms=500_000, clock=clock)
    carried.load({"failing_since_ms": 600_000}, "w1")
    assert carried.since_ms == 600_000 and carried.failed()
    floored = FailureStreak(60.0, started_at_ms=700_000, clock=clock)
    floored.load({"failing_since_ms": 600_000}, "w1")
    assert floored.since_ms is None
    unreadable = FailureStreak(60.0, None, clock)
    unreadable.load({"failing_since_ms": "yesterday"}, "w1")
    assert unreadable.since_ms is None


# --------------------------------------------- rotation reaches the running sink


@pytest.fixture
def store_config(tmp_path: Path) -> Config:
    """LMDB only here (the harness's store)."""
    return Config(storage=StorageConfig(data_dir=str(tmp_path / "data")))


async def test_a_rotation_reaches_the_running_sink_before_the_answer(
        harness: tuple[Harness, FakeClock], receiver: Receiver) -> None:  # noqa: F811
    h, _ = harness
    await h.start_supervisor()
    await h.add_webhook(receiver.url, cursor=1)
    await eventually(lambda: h.supervisor.sink_running("w1"))
    state = h.supervisor.env.signing.peek("w1", "i1")
    assert state is not None and state.signer() is None  # unsigned until now
    answer = await h.service.rotate_secret("w1", None)
    # No turn of the event loop in between: the supervisor has not looked yet.
    signer = state.signer()
    assert signer is not None
    assert library_verifies(answer["signing_secret"], b"{}", signer.headers("e1", b"{}"))

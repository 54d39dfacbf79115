"""Replays through the real daemon and real receivers: dry-run counts against what is then
delivered, the replayed request against the original, pacing beside live traffic, cancel,
pause and resume, the limit and the refusals, restarts and SIGKILLs, on both backends."""

from __future__ import annotations

import json
import re
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from tests.helpers.api import ApiClient
from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.cluster import Cluster
from tests.helpers.control import Line, control_path, wait_settled
from tests.helpers.daemon import FAST, Factory, merge
from tests.helpers.nats_server import NatsServer
from tests.helpers.receiver import Received, Receiver, delayed
from tests.helpers.s3 import MotoServer, s3_params
from tests.helpers.s3 import settings as s3_settings
from tests.helpers.signing import library_verifies, new_secret
from tests.helpers.wait import eventually

BACKENDS = EVERY_BACKEND
REPLAY = "Eventstreamd-Replay"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ago(seconds: float) -> str:
    return iso(datetime.now(UTC) - timedelta(seconds=seconds))


def replayed(receiver: Receiver, replay_id: str | None = None) -> list[Received]:
    return [r for r in receiver.requests if REPLAY in r.headers
            and (replay_id is None or r.headers[REPLAY] == replay_id)]


def live(receiver: Receiver) -> list[Received]:
    return [r for r in receiver.requests if REPLAY not in r.headers]


def count_lines(objects: dict[str, bytes]) -> int:
    return sum(len(body.splitlines()) for body in objects.values())


def mixed(count: int) -> list[dict[str, Any]]:
    """order.created, order.paid and return.opened in turn, each with its index."""
    names = ("order.created", "order.paid", "return.opened")
    return [{"id": f"e{i}", "name": names[i % 3], "payload": {"i": i}} for i in range(count)]


async def delivered_live(api: ApiClient, receiver: Receiver, count: int,
                         integration: str = "orders", **controls: Any) -> str:
    """`count` mixed events delivered live to a new webhook; the replay start before them."""
    since = ago(2)
    await api.webhook(integration, receiver.url, controls=controls or None)
    await api.publish(mixed(count))
    await eventually(lambda: len(live(receiver)) >= count, what=f"{count} live deliveries")
    return since


# ------------------------------------------------------------------- counts


async def test_dry_run_counts_match_what_the_replay_delivers(daemon_factory: Factory) -> None:
    secret = new_secret()
    d = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(d) as api:
        since = await delivered_live(api, receiver, 90, signing_secret=secret)
        assert await api.replay("orders", {"starts_at": since, "dry_run": True},
                                expect=200) == {"events": 90}
        only_paid = {"event_filter": ["order.paid"]}
        returns = {"entity_filter": ["return"]}
        for conditions, count in ((only_paid, 30), (returns, 30),
                                  ({**only_paid, **returns}, 60)):
            answer = await api.replay("orders", {"starts_at": since, "dry_run": True,
                                                 "filter_conditions": conditions}, expect=200)
            assert answer == {"events": count}, conditions
        assert await api.replays("orders") == []  # a dry run starts nothing

        started = await api.replay("orders", {"starts_at": since,
                                              "filter_conditions": only_paid})
        assert started["events"] == 30 and started["status"] == "running"
        done = await api.wait_replay("orders", started["replay_id"])
        assert done["delivered"] == done["events"] == 30 and done["finished_at"]
        await eventually(lambda: len(replayed(receiver)) == 30)
        again = replayed(receiver, started["replay_id"])
        assert sorted(r.body["payload"]["i"] for r in again) == list(range(1, 90, 3))

        # The same request as the original, plus the replay's header.
        originals = {r.key: r for r in live(receiver)}
        for request in again:
            original = originals[request.key]
            assert request.raw == original.raw
            assert request.headers["webhook-id"] == original.headers["webhook-id"] == request.key
            assert library_verifies(secret, request.raw, request.headers)
            for name in ("Authorization", "Content-Type"):
                assert request.headers.get(name) == original.headers.get(name)

        everything = await api.replay("orders", {"starts_at": since})
        assert everything["events"] == 90
        await api.wait_replay("orders", everything["replay_id"])
        await eventually(lambda: len(replayed(receiver, everything["replay_id"])) == 90)
        logs = [e["action"] for e in await api.logs("orders")]
        assert logs.count("replay_started") == 2 and logs.count("replay_completed") == 2


# ------------------------------------------------------------ pacing, cancel


async def test_a_paced_replay_keeps_its_rate_and_live_events_do_not_wait(
        daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(d) as api:
        since = await delivered_live(api, receiver, 40)
        rate = 20.0
        started = await api.replay("orders", {"starts_at": since, "max_rate": rate})
        replay_id = started["replay_id"]
        await eventually(lambda: len(replayed(receiver)) >= 5)
        published = time.time()
        await api.publish([{"id": "live-1", "name": "order.created", "payload": {}}])
        await eventually(lambda: any(r.key == "live-1" for r in receiver.requests))
        arrived = next(r.at for r in receiver.requests if r.key == "live-1")
        await api.wait_replay("orders", replay_id)
        times = sorted(r.at for r in replayed(receiver, replay_id))
        assert len(times) == 40
        # A lower bound only (a loaded machine may be slower): N events at R per second
        # take at least (N - 1) / R.
        assert times[-1] - times[0] >= 39 / rate * 0.9
        # The live event went out beside the replay, not after it.
        assert arrived < times[-1]
        assert arrived - published < 1.5


async def test_the_integrations_rate_is_shared_and_live_goes_first(
        daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(d) as api:
        since = await delivered_live(api, receiver, 30, max_rate=15)
        started = await api.replay("orders", {"starts_at": since})
        await eventually(lambda: len(replayed(receiver)) >= 3)
        await api.publish([{"id": f"live-{i}", "name": "order.created", "payload": {}}
                           for i in range(10)])
        await api.wait_replay("orders", started["replay_id"])
        await eventually(lambda: sum(r.key.startswith("live-") for r in receiver.requests)
                         == 10)
        window = [r.at for r in receiver.requests if r.at >= replayed(receiver)[0].at]
        # Together within the integration's max_rate: 40 requests at 15/s.
        assert max(window) - min(window) >= 39 / 15 * 0.9
        last_live = max(r.at for r in receiver.requests if r.key.startswith("live-"))
        last_replayed = max(r.at for r in replayed(receiver))
        assert last_live < last_replayed  # the live ones did not queue behind the replay


async def test_cancel_stops_a_replay_within_a_second(daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(d) as api:
        since = await delivered_live(api, receiver, 60)
        started = await api.replay("orders", {"starts_at": since, "max_rate": 10})
        replay_id = started["replay_id"]
        await eventually(lambda: len(replayed(receiver)) >= 3)
        cancelled = await api.cancel_replay("orders", replay_id)
        answered = time.time()
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
        await anyio.sleep(2.0)
        late = [r for r in replayed(receiver) if r.at > answered + 1.0]
        assert late == []
        assert len(replayed(receiver)) < 60
        listed = await api.replays("orders")
        assert [r["status"] for r in listed] == ["cancelled"]
        # Its count is what it finished: every request that reached the receiver.
        assert listed[0]["delivered"] == len(replayed(receiver)) >= 3
        # Cancelling again answers it as it is; an unknown replay is a 404.
        assert (await api.cancel_replay("orders", replay_id))["status"] == "cancelled"
        missing = await api.cancel_replay("orders", "nope", expect=404)
        assert missing["error_code"] == "replay_not_found"


async def test_a_replay_pauses_while_stopped_and_resumes_on_start(
        daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(d) as api:
        since = await delivered_live(api, receiver, 50)
        started = await api.replay("orders", {"starts_at": since, "max_rate": 25})
        replay_id = started["replay_id"]
        await eventually(lambda: len(replayed(receiver)) >= 5)
        await api.stop("orders")
        paused = await api.wait_replay("orders", replay_id, "paused")
        assert paused["delivered"] < 50
        await anyio.sleep(1.0)  # whatever was under way has arrived
        count = len(replayed(receiver))
        await anyio.sleep(1.0)
        assert len(replayed(receiver)) == count  # nothing while paused
        await api.start("orders")
        done = await api.wait_replay("orders", replay_id)
        assert done["delivered"] == 50
        assert {r.key for r in replayed(receiver)} == {f"e{i}" for i in range(50)}


# ------------------------------------------------------------------ refusals


async def test_the_replay_limit_and_bad_ranges_are_refused(daemon_factory: Factory) -> None:
    d = daemon_factory(merge(FAST, {"delivery": {"max_replays": 2}}))
    async with Receiver() as receiver, ApiClient(d) as api:
        since = await delivered_live(api, receiver, 5)
        slow = {"starts_at": since, "max_rate": 0.5}
        first = await api.replay("orders", slow)
        await api.replay("orders", slow)
        refused = await api.replay("orders", slow, expect=409)
        assert refused["error_code"] == "too_many_replays"
        assert "delivery.max_replays" in refused["message"]
        assert (await api.replay("orders", {**slow, "dry_run": True}, expect=200)) == \
            {"events": 5}  # counting is never limited
        await api.cancel_replay("orders", first["replay_id"])
        await api.replay("orders", slow)  # room again

        now = datetime.now(UTC)
        for body, code in (
                ({"starts_at": iso(now + timedelta(minutes=5))}, "starts_at_in_future"),
                ({"starts_at": since, "ends_at": iso(now + timedelta(minutes=5))},
                 "ends_at_in_future"),
                ({"starts_at": since, "ends_at": since}, "ends_at_before_starts_at"),
                ({"starts_at": ago(10), "ends_at": ago(20)}, "ends_at_before_starts_at"),
                ({"starts_at": iso(now - timedelta(days=400))}, "starts_at_before_retention"),
                ({"starts_at": "yesterday"}, "invalid_request"),
                ({}, "invalid_request"),
                ({"starts_at": since, "max_rate": 0}, "invalid_request"),
                ({"starts_at": since, "start_at": since}, "invalid_request"),
                ({"starts_at": since, "filter_conditions": {"event_filter": "order.paid"}},
                 "invalid_request")):
            answer = await api.replay("orders", body, expect=400)
            assert answer["error_code"] == code, (body, answer)
        assert (await api.replay("nobody", {"starts_at": since}, expect=404))["error_code"] \
            == "integration_not_found"
        await api.replays("nobody", expect=404)


async def test_deleting_the_integration_deletes_its_replays(daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(d) as api:
        since = await delivered_live(api, receiver, 20)
        started = await api.replay("orders", {"starts_at": since, "max_rate": 5})
        await eventually(lambda: len(replayed(receiver)) >= 2)
        await api.delete("orders")
        deleted = time.time()
        await api.replays("orders", expect=404)
        await api.webhook("orders", receiver.url)  # the same id again: no replay of its own
        assert await api.replays("orders") == []
        await anyio.sleep(1.5)
        assert not [r for r in replayed(receiver, started["replay_id"]) if r.at > deleted + 1]


# ----------------------------------------------------------- crashes, restarts


async def test_a_replay_survives_a_sigkill_and_delivers_every_event(
        daemon_factory: Factory) -> None:
    d = daemon_factory(merge(FAST, {"delivery": {"cursor_every": 20}}))
    async with Receiver(delayed(0.01)) as receiver:
        async with ApiClient(d) as api:
            since = await delivered_live(api, receiver, 300)
            started = await api.replay("orders", {"starts_at": since, "max_rate": 100})
            replay_id = started["replay_id"]
            await eventually(lambda: len(replayed(receiver)) >= 60)
        d.send_signal(signal.SIGKILL)
        d.wait(20)
        before = len(replayed(receiver))
        async with ApiClient(d.start()) as api:
            done = await api.wait_replay("orders", replay_id, timeout=60)
            assert done["delivered"] == done["events"] == 300
        keys = {r.key for r in replayed(receiver, replay_id)}
    assert keys == {f"e{i}" for i in range(300)}  # every event at least once
    # Again only what the crash left unsaved (the crash bound), not everything.
    assert len(replayed(receiver)) - 300 <= 20 + 8, before


async def test_an_s3_replay_writes_every_event_once_under_its_own_keys_across_a_crash(
        daemon_factory: Factory, moto: MotoServer, bucket: str) -> None:
    d = daemon_factory(s3_settings(moto, rotate_interval="1s"))
    tenants = ("t0", "t1", "t2")
    published = [{"id": f"e{i}", "name": "order.created", "tenant": tenants[i % 3],
                  "payload": {"i": i}} for i in range(300)]
    async with ApiClient(d) as api:
        since = ago(2)
        await api.create(id="lake", s3_parameters=s3_params(bucket, "events"))
        await api.publish(published)
        await moto.wait_objects(bucket, lambda o: count_lines(o) == 300)
        await wait_settled(d, ["lake"])
    live_objects = await moto.objects(bucket)
    # The first upload after this start is the replay's: it kills the daemon right after.
    d.stop()
    d.env = {"EVENTSTREAMD_CRASH_AT": "s3_after_upload"}
    async with ApiClient(d.start()) as api:
        started = await api.replay("lake", {"starts_at": since})
        replay_id = started["replay_id"]
        assert started["events"] == 300
    assert d.proc is not None and d.proc.wait(60) == -signal.SIGKILL
    d.wait(1)
    d.env = {}
    async with ApiClient(d.start()) as api:
        done = await api.wait_replay("lake", replay_id, timeout=60)
        assert done["delivered"] == 300
    objects = await moto.objects(bucket)
    replays = {k: v for k, v in objects.items() if f"/replay-{replay_id}/" in k}
    assert {k for k in objects if k not in replays} == set(live_objects)
    assert all(k.startswith(("events/t0/", "events/t1/", "events/t2/")) for k in replays)
    lines = [json.loads(line) for body in replays.values() for line in body.splitlines()]
    assert sorted(line["payload"]["i"] for line in lines) == list(range(300))  # exactly once
    for key, body in replays.items():
        tenant = key.split("/")[1]
        assert {json.loads(line)["tenant"] for line in body.splitlines()} == {tenant}


async def test_a_replay_moves_with_the_lease_when_its_daemon_dies(
        tmp_path: Path, nats_server: NatsServer) -> None:
    cluster = Cluster(tmp_path, [nats_server.url], 2).start()
    try:
        async with Receiver(delayed(0.005)) as receiver, \
                ApiClient(cluster.daemons[0]) as api0, ApiClient(cluster.daemons[1]) as api1:
            since = await delivered_live(api0, receiver, 200)
            owner = live(receiver)[-1].instance
            survivor = api1 if owner == "d0" else api0
            started = await survivor.replay("orders", {"starts_at": since, "max_rate": 50})
            replay_id = started["replay_id"]
            await eventually(lambda: len(replayed(receiver)) >= 40)
            assert {r.instance for r in replayed(receiver)} == {owner}
            cluster.daemons[int(owner[1:])].kill()
            done = await survivor.wait_replay("orders", replay_id, timeout=60)
            assert done["delivered"] == done["events"] == 200
            senders = {r.instance for r in replayed(receiver, replay_id)}
            keys = {r.key for r in replayed(receiver, replay_id)}
        assert keys == {f"e{i}" for i in range(200)}
        assert senders == {"d0", "d1"}  # it went on where the lease went
    finally:
        cluster.close()


# ------------------------------------------------- control socket, status, metrics


async def test_the_control_socket_starts_watches_and_cancels_replays(
        daemon_factory: Factory) -> None:
    d = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(d) as api:
        since = await delivered_live(api, receiver, 40)
        client = await Line.connect(control_path(d))
        try:
            counted = await client.call("replay", integration_id="orders",
                                        replay={"starts_at": since, "dry_run": True})
            assert counted["result"] == {"events": 40}
            bad = await client.call("replay", integration_id="orders",
                                    replay={"starts_at": "soon"})
            assert bad["error"]["error_code"] == "invalid_request"
            assert bad["error"]["status"] == 400
            not_object = await client.call("replay", integration_id="orders", replay="x")
            assert not_object["error"]["error_code"] == "invalid_request"
            started = (await client.call("replay", integration_id="orders", replay={
                "starts_at": since, "max_rate": 10}))["result"]
            replay_id = started["replay_id"]
            assert started["events"] == 40 and started["status"] == "running"

            def shown(snapshot: dict[str, Any]) -> dict[str, Any]:
                return snapshot["result"]["integrations"][0]["replays"][0]

            watched = await eventually(lambda: client.call("status"),
                                       lambda s: shown(s)["delivered"] >= 5)
            replay = shown(watched)
            assert replay["replay_id"] == replay_id and replay["status"] == "running"
            assert replay["events"] == 40 and replay["in_flight"] is not None
            metrics = await api.answer("GET", "/metrics")
            assert re.search(r"^eventstreamd_replays_running 1(\.0)?$", metrics[1], re.M)
            assert 'eventstreamd_replayed_events_total{integration="orders",kind="webhook"}' \
                in metrics[1]
            listed = (await client.call("replays", integration_id="orders"))["result"]
            assert [r["replay_id"] for r in listed["replays"]] == [replay_id]
            cancelled = await client.call("cancel_replay", integration_id="orders",
                                          replay_id=replay_id)
            assert cancelled["result"]["status"] == "cancelled"
            gone = await client.call("cancel_replay", integration_id="orders",
                                     replay_id="unknown")
            assert gone["error"]["error_code"] == "replay_not_found"
            await eventually(lambda: api.answer("GET", "/metrics"),
                             lambda m: re.search(r"^eventstreamd_replays_running 0(\.0)?$",
                                                 m[1], re.M))
        finally:
            await client.close()

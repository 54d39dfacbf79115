"""Load generators and baselines, each run as its own process.

`python -m bench.worker COMMAND 'JSON-ARGS'` runs one job and prints one JSON
line with its result. Every job that generates load reports its own CPU time
over wall time for the measured phase (`busy`; 1.0 = one core fully used),
which is how the suite shows that the load generator was not the bottleneck.

Commands:
- `ingest`            POST /events with the raw client: NDJSON batches or one event
                      per request, C connections, N requests.
- `paced`             one event per request at a steady rate; each event carries its
                      send time (`payload.t`, monotonic ns) for the receiver.
- `lmdb_baseline`     orjson parse + msgpack pack + LMDB put, one transaction per batch,
                      fsync'd like the daemon's store.
- `webhook_baseline`  bare aiohttp client posting the webhook bodies at a concurrency.
- `scrape_while_polled` GET /metrics a few times, /healthz polled during each scrape.
- `fill_store`        writes N events straight into an LmdbStore (no daemon running).
- `s3_create_bucket`, `s3_watch`, `s3_baseline`  against a moto server.
- `js_ingest_baseline` bare nats-py publishing the same events to the same nats-server:
                      atomic batches (NDJSON mode) or one acknowledged publish per event.
- `js_webhook_baseline` bare nats-py batched DIRECT.GET reads of a daemon's event stream,
                      each body POSTed with a bare aiohttp client at a concurrency.
- `js_fill`           writes N events in the daemon's format into a JetStream event stream.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .common import MIB, TOKEN, EventFactory, run_on_daemon_loop
from .rawhttp import RawConnection, encode_request, split_url

NDJSON = "application/x-ndjson"
MAX_DISTINCT_BODIES = 16


class Phase:
    """Wall and CPU time of this process over one measured phase."""

    def __init__(self) -> None:
        print(json.dumps({"phase": "start"}), flush=True)
        self.wall0 = time.monotonic()
        self.cpu0 = time.process_time()
        self.t0_ns = time.monotonic_ns()

    def result(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall0
        cpu = time.process_time() - self.cpu0
        return {"wall_s": wall, "cpu_s": cpu, "busy": cpu / wall if wall > 0 else 0.0,
                "t0_ns": self.t0_ns, "t1_ns": time.monotonic_ns()}


# ---------------------------------------------------------------------- ingest

def _ingest_requests(a: dict[str, Any]) -> list[bytes]:
    factory = EventFactory(a["published_at"])
    headers = {"Authorization": f"Bearer {a.get('token', TOKEN)}"}
    url = a["url"]
    out = []
    if a["mode"] == "ndjson":
        batch = int(a["batch"])
        for n in range(min(MAX_DISTINCT_BODIES, int(a["count"]))):
            body = factory.ndjson(n * batch, batch)
            out.append(encode_request("POST", url, body, {**headers, "Content-Type": NDJSON}))
    else:
        for i in range(1024):
            body = orjson.dumps(factory.event(i))
            out.append(encode_request("POST", url, body,
                                      {**headers, "Content-Type": "application/json"}))
    return out


async def ingest(a: dict[str, Any]) -> dict[str, Any]:
    requests = _ingest_requests(a)
    host, port, _ = split_url(a["url"])
    concurrency, count = int(a["concurrency"]), int(a["count"])
    time_limit = float(a.get("time_limit", 300.0))
    conns = [await RawConnection(host, port).connect() for _ in range(concurrency)]
    statuses: dict[int, int] = {}
    accepted = 0

    async def send(conn: RawConnection, i: int) -> None:
        nonlocal accepted
        status, body = await conn.request(requests[i % len(requests)])
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            accepted += int(orjson.loads(body)["accepted"])

    warmup = int(a.get("warmup", 0))
    for i in range(warmup):
        await send(conns[i % concurrency], i)
    accepted, statuses = 0, {}
    phase = Phase()
    end = time.monotonic() + time_limit
    state = {"next": 0}

    async def run(conn: RawConnection) -> None:
        while state["next"] < count and time.monotonic() < end:
            i = state["next"]
            state["next"] += 1
            await send(conn, i)

    await asyncio.gather(*(run(c) for c in conns))
    result = phase.result()
    for conn in conns:
        await conn.close()
    return {**result, "requests": sum(statuses.values()), "events": accepted,
            "statuses": {str(k): v for k, v in statuses.items()}}


async def publish_all(a: dict[str, Any]) -> dict[str, Any]:
    """Publish events 0..N-1 (each exactly once) in NDJSON batches; for filling the log."""
    factory = EventFactory(a["published_at"])
    host, port, _ = split_url(a["url"])
    total, batch = int(a["events"]), int(a.get("batch", 1000))
    headers = {"Authorization": f"Bearer {a.get('token', TOKEN)}", "Content-Type": NDJSON}
    state = {"next": 0, "accepted": 0}

    async def run() -> None:
        conn = await RawConnection(host, port).connect()
        while state["next"] < total:
            start = state["next"]
            n = min(batch, total - start)
            state["next"] += n
            body = factory.ndjson(start, n)
            status, answer = await conn.request(encode_request("POST", a["url"], body, headers))
            if status != 200:
                raise RuntimeError(f"publish answered {status}: {answer[:300]!r}")
            state["accepted"] += int(orjson.loads(answer)["accepted"])
        await conn.close()

    phase = Phase()
    await asyncio.gather(*(run() for _ in range(int(a.get("concurrency", 2)))))
    return {**phase.result(), "events": state["accepted"]}


async def paced(a: dict[str, Any]) -> dict[str, Any]:
    """One event per request at `rate`/s for `duration` s, each stamped with its send time."""
    factory = EventFactory(a["published_at"])
    url, rate, duration = a["url"], float(a["rate"]), float(a["duration"])
    max_conns = int(a.get("max_conns", 64))
    host, port, _ = split_url(url)
    headers = {"Authorization": f"Bearer {a.get('token', TOKEN)}",
               "Content-Type": "application/json"}
    total = int(rate * duration)
    idle: asyncio.Queue[RawConnection] = asyncio.Queue()
    opened = 0
    acks: list[int] = []
    statuses: dict[int, int] = {}
    behind_ms = 0.0
    tasks: set[asyncio.Task[None]] = set()

    async def send(conn: RawConnection, i: int) -> None:
        event = factory.event(i)
        sent = time.monotonic_ns()
        event["payload"]["t"] = sent
        status, _ = await conn.request(encode_request("POST", url, orjson.dumps(event), headers))
        acks.append(time.monotonic_ns() - sent)
        statuses[status] = statuses.get(status, 0) + 1
        idle.put_nowait(conn)

    for _ in range(8):
        idle.put_nowait(await RawConnection(host, port).connect())
        opened += 1
    phase = Phase()
    start = time.monotonic()
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            behind_ms = max(behind_ms, -delay * 1000)
        if idle.empty() and opened < max_conns:
            idle.put_nowait(await RawConnection(host, port).connect())
            opened += 1
        conn = await asyncio.wait_for(idle.get(), 30)
        task = asyncio.create_task(send(conn, i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    result = phase.result()
    while not idle.empty():
        await idle.get_nowait().close()
    acks.sort()

    def at(q: float) -> float | None:
        return acks[min(len(acks) - 1, round(q * (len(acks) - 1)))] / 1e6 if acks else None

    return {**result, "sent": total, "connections": opened,
            "statuses": {str(k): v for k, v in statuses.items()},
            "achieved_rate": total / result["wall_s"], "max_behind_ms": behind_ms,
            "ack_p50_ms": at(0.5), "ack_p99_ms": at(0.99)}


# ---------------------------------------------------------------- raw baselines

def lmdb_baseline(a: dict[str, Any]) -> dict[str, Any]:
    """What ingest essentially is, with the bare libraries: parse, pack, durable batched put."""
    import lmdb
    import msgpack

    from eventstreamd.storage.records import u64

    factory = EventFactory(a["published_at"])
    batch, count = int(a["batch"]), int(a["count"])
    bodies = [factory.ndjson(n * batch, batch) for n in range(min(MAX_DISTINCT_BODIES, count))]
    env = lmdb.open(a["dir"], map_size=4 << 30, max_dbs=2, subdir=True, sync=True,
                    metasync=True, readahead=False)
    db = env.open_db(b"events")
    seq = 0

    def one(body: bytes) -> int:
        nonlocal seq
        with env.begin(write=True) as txn, txn.cursor(db=db) as cur:
            for line in body.split(b"\n"):
                if line:
                    seq += 1
                    cur.put(u64(seq), msgpack.packb(orjson.loads(line)), append=True)
        return batch

    for n in range(int(a.get("warmup", 0))):
        one(bodies[n % len(bodies)])
    start_seq = seq
    phase = Phase()
    for n in range(count):
        one(bodies[n % len(bodies)])
    result = phase.result()
    env.close()
    return {**result, "events": seq - start_seq}


async def webhook_baseline(a: dict[str, Any]) -> dict[str, Any]:
    """Bare aiohttp client: the daemon's webhook bodies and headers, `concurrency` per URL."""
    import aiohttp

    factory = EventFactory(a["published_at"])
    urls, count, concurrency = a["urls"], int(a["count"]), int(a["concurrency"])
    bodies = [factory.delivery_body(i) for i in range(count)]
    keys = [str(uuid.uuid4()) for _ in range(count)]
    statuses: dict[int, int] = {}
    end = time.monotonic() + float(a.get("time_limit", 300.0))
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector) as session:
        phase = Phase()

        async def run(url: str, state: dict[str, int]) -> None:
            while state["next"] < count and time.monotonic() < end:
                i = state["next"]
                state["next"] += 1
                headers = {"Content-Type": "application/json", "Idempotency-Key": keys[i]}
                async with session.post(url, data=bodies[i], headers=headers,
                                        timeout=timeout, allow_redirects=False) as response:
                    await response.content.read(1024)
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        states = {url: {"next": 0} for url in urls}
        await asyncio.gather(*(run(url, states[url]) for url in urls for _ in range(concurrency)))
        result = phase.result()
    return {**result, "sent": sum(statuses.values()),
            "statuses": {str(k): v for k, v in statuses.items()}}


async def scrape_while_polled(a: dict[str, Any]) -> dict[str, Any]:
    """`scrapes` GETs of /metrics, one after another; during each, /healthz asked again and
    again on a connection of its own. Each scrape's milliseconds, and those of every
    /healthz answered during one."""
    import aiohttp

    url, scrapes = a["url"], int(a.get("scrapes", 5))
    headers = {"Authorization": f"Bearer {a.get('token', TOKEN)}"}
    scrape_ms: list[float] = []
    healthz_ms: list[float] = []
    size = 0
    async with aiohttp.ClientSession() as scraper, aiohttp.ClientSession() as poller:
        async with poller.get(f"{url}/healthz") as response:  # both connections open
            await response.read()
        async with scraper.get(f"{url}/metrics", headers=headers) as response:
            await response.read()
        phase = Phase()
        for _ in range(scrapes):
            scraping = asyncio.Event()
            scraping.set()

            async def poll(scraping: asyncio.Event = scraping) -> None:
                while scraping.is_set():
                    t0 = time.perf_counter()
                    async with poller.get(f"{url}/healthz") as response:
                        await response.read()
                    healthz_ms.append(1000 * (time.perf_counter() - t0))
                    await asyncio.sleep(0.002)

            polling = asyncio.create_task(poll())
            t0 = time.perf_counter()
            async with scraper.get(f"{url}/metrics", headers=headers) as response:
                size = len(await response.read())
            scrape_ms.append(1000 * (time.perf_counter() - t0))
            scraping.clear()
            await polling
            await asyncio.sleep(0.2)
        result = phase.result()
    return {**result, "scrape_ms": scrape_ms, "healthz_ms": healthz_ms, "bytes": size}


# ------------------------------------------------------------------ store fill

async def fill_store(a: dict[str, Any]) -> dict[str, Any]:
    """N events written with the daemon's own store code, before any daemon runs."""
    import orjson

    from eventstreamd.model import NewEvent
    from eventstreamd.storage.lmdb_store import LmdbStore

    factory = EventFactory(a["published_at"])
    count, chunk = int(a["count"]), 10_000
    events = [factory.event(i) for i in range(4096)]  # ids stay unique, payloads repeat
    bodies = [orjson.dumps({"tenant": "default", "name": e["name"],
                            "published_at": e["published_at"], "payload": e["payload"]})
              for e in events]
    phase = Phase()
    async with LmdbStore(Path(a["data_dir"]), map_size=int(a["map_size"])) as store:
        written = 0
        while written < count:
            n = min(chunk, count - written)
            await store.append([
                NewEvent(str(uuid.uuid4()), "default", events[i % len(events)]["name"],
                         bodies[i % len(events)]) for i in range(written, written + n)])
            written += n
        head = (await store.stats()).events
    return {**phase.result(), "events": head}


# -------------------------------------------------------------------- JetStream

async def _js_connect(a: dict[str, Any]) -> Any:
    import nats

    return await nats.connect(a["nats"], pending_size=0, max_reconnect_attempts=1)


async def _js_stream(nc: Any, prefix: str) -> Any:
    """The event stream a daemon with `prefix` uses, created with the daemon's own settings;
    its `EventLog`, which names the stream and its subjects."""
    from eventstreamd.storage.jetstream.client import API

    log = _event_log(prefix)
    config = log.stream_config()
    answer = orjson.loads((await nc.request(f"{API}.STREAM.CREATE.{config['name']}",
                                            orjson.dumps(config), timeout=10)).data)
    if "error" in answer and answer["error"].get("err_code") != 10058:  # exists
        raise RuntimeError(f"cannot create the stream: {answer['error']}")
    return log


def _subjects(log: Any) -> tuple[str, str]:
    """(continuation, commit) subjects of the daemon's atomic batches."""
    return log.more_subject, log.commit_subject


def _event_log(prefix: str) -> Any:
    from eventstreamd.storage.jetstream.events import EventLog

    # Only its subject names are asked for: no client is needed.
    return EventLog(None, prefix, 1, 30 * 86400.0, 1000, 0)  # type: ignore[arg-type]


async def _js_commit(nc: Any, subjects: tuple[str, str], payloads: list[bytes]) -> int:
    """One atomic batch the bare way: n-1 publishes without reply, the commit as a request."""
    batch_id = uuid.uuid4().hex
    last = len(payloads)
    for number, payload in enumerate(payloads, 1):
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(number)}
        if number == last:
            headers.update({"Nats-Batch-Commit": "1", "Nats-Msg-Id": batch_id})
            answer = orjson.loads((await nc.request(subjects[1], payload, headers=headers,
                                                    timeout=30)).data)
            if "error" in answer:
                raise RuntimeError(f"commit refused: {answer['error']}")
            return last
        await nc.publish(subjects[0], payload, headers=headers)
    return 0


async def js_ingest_baseline(a: dict[str, Any]) -> dict[str, Any]:
    """Bare nats-py, the same events, the same server, `sync_interval: always` as the daemon:
    NDJSON mode = one atomic batch of `batch` events per request (the daemon's unit), single
    mode = one acknowledged publish per event; `concurrency` publishers either way."""
    factory = EventFactory(a["published_at"])
    from eventstreamd.storage.jetstream.client import API

    nc = await _js_connect(a)
    log = await _js_stream(nc, a["prefix"])
    subjects = _subjects(log)
    batch = int(a.get("batch", 1))
    lines = [factory.line(i).rstrip(b"\n") for i in range(max(batch, 1024))]
    concurrency, count = int(a["concurrency"]), int(a["count"])
    state = {"next": 0, "events": 0}

    async def one(i: int) -> int:
        if a["mode"] == "ndjson":
            return await _js_commit(nc, subjects, lines[:batch])
        answer = orjson.loads((await nc.request(
            subjects[1], lines[i % len(lines)], headers={"Nats-Msg-Id": uuid.uuid4().hex},
            timeout=30)).data)
        if "error" in answer:
            raise RuntimeError(f"publish refused: {answer['error']}")
        return 1

    for i in range(int(a.get("warmup", 0))):
        await one(i)

    async def run() -> None:
        while state["next"] < count:
            i = state["next"]
            state["next"] += 1
            state["events"] += await one(i)

    phase = Phase()
    await asyncio.gather(*(run() for _ in range(concurrency)))
    result = phase.result()
    await nc.request(f"{API}.STREAM.DELETE.{log.stream}", b"", timeout=30)
    await nc.close()
    return {**result, "events": state["events"]}


async def js_webhook_baseline(a: dict[str, Any]) -> dict[str, Any]:
    """Bare nats-py and aiohttp: read a daemon's stored events with batched DIRECT.GET and
    POST each body (the daemon's headers) at `concurrency`, like one webhook integration."""
    import aiohttp

    from eventstreamd.storage.jetstream.client import API
    from eventstreamd.storage.jetstream.events import decode

    nc = await _js_connect(a)
    stream, url = _event_log(a["prefix"]).stream, a["url"]
    count, concurrency = int(a["count"]), int(a["concurrency"])
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=512)
    statuses: dict[int, int] = {}
    inbox = nc.new_inbox()
    pending: asyncio.Queue[Any] = asyncio.Queue()
    sub = await nc.subscribe(inbox, cb=pending.put)

    async def read() -> None:
        seq, sent = 1, 0
        while sent < count:
            await nc.publish(f"{API}.DIRECT.GET.{stream}",
                             orjson.dumps({"seq": seq, "batch": 256, "max_bytes": 4 << 20}),
                             reply=inbox)
            while True:
                msg = await asyncio.wait_for(pending.get(), 30)
                status = (msg.headers or {}).get("Status")
                if status is not None:
                    break
                event = decode(int(msg.headers["Nats-Sequence"]), 0, msg.data)
                await queue.put((event.id, event.body))
                seq, sent = event.seq + 1, sent + 1
            if status != "204":
                break
        for _ in range(concurrency):
            await queue.put(None)

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def post() -> None:
            while (item := await queue.get()) is not None:
                headers = {"Content-Type": "application/json", "Idempotency-Key": item[0]}
                async with session.post(url, data=item[1], headers=headers, timeout=timeout,
                                        allow_redirects=False) as response:
                    await response.content.read(1024)
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        phase = Phase()
        await asyncio.gather(read(), *(post() for _ in range(concurrency)))
        result = phase.result()
    await sub.unsubscribe()
    await nc.close()
    return {**result, "sent": sum(statuses.values()),
            "statuses": {str(k): v for k, v in statuses.items()}}


async def js_fill(a: dict[str, Any]) -> dict[str, Any]:
    """N events in the daemon's own message format, in atomic batches of 1,000."""
    from eventstreamd.model import NewEvent
    from eventstreamd.storage.jetstream.events import encode

    factory = EventFactory(a["published_at"])
    nc = await _js_connect(a)
    subjects = _subjects(await _js_stream(nc, a["prefix"]))
    payloads = []
    for i in range(1000):
        e = factory.event(i)
        body = orjson.dumps({"tenant": "default", "name": e["name"],
                             "published_at": e["published_at"], "payload": e["payload"]})
        payloads.append(encode(NewEvent(str(uuid.uuid4()), "default", e["name"], body)))
    count, written = int(a["count"]), 0
    phase = Phase()
    while written < count:
        written += await _js_commit(nc, subjects, payloads[:min(1000, count - written)])
    result = phase.result()
    await nc.close()
    return {**result, "events": written}


# -------------------------------------------------------------------------- S3

def _s3_client(a: dict[str, Any]) -> Any:
    from aiobotocore.session import get_session

    return get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=a["endpoint"],
        aws_access_key_id=a["key_id"], aws_secret_access_key=a["secret"])


async def s3_create_bucket(a: dict[str, Any]) -> dict[str, Any]:
    async with _s3_client(a) as s3:
        await s3.create_bucket(Bucket=a["bucket"])
    return {"ok": True}


async def _s3_total(s3: Any, bucket: str) -> tuple[int, list[tuple[str, int]]]:
    objects: list[tuple[str, int]] = []
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        objects += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
    return sum(size for _, size in objects), objects


async def s3_watch(a: dict[str, Any]) -> dict[str, Any]:
    """Poll the bucket until `expected` bytes are there, or (when `expected` is None:
    compressed files, whose sizes are not known in advance) `expected_objects` objects
    (or `timeout`); when did they arrive."""
    expected = int(a["expected"]) if a.get("expected") is not None else None
    expected_objects = int(a.get("expected_objects") or 0)
    timeout, interval = float(a["timeout"]), float(a["interval"])
    first_timeout = float(a.get("first_timeout", timeout))
    started = time.monotonic()

    def done(total: int, objects: list[tuple[str, int]]) -> bool:
        return total >= expected if expected is not None else len(objects) >= expected_objects

    first_ns = None
    total, objects = 0, list[tuple[str, int]]()
    end = time.monotonic() + timeout
    async with _s3_client(a) as s3:
        print(json.dumps({"ready": True}), flush=True)
        for _ in range(int(timeout / interval) + 2):
            total, objects = await _s3_total(s3, a["bucket"])
            if total and first_ns is None:
                first_ns = time.monotonic_ns()
            if done(total, objects) or time.monotonic() >= end:
                break
            if not total and time.monotonic() - started > first_timeout:
                break
            await asyncio.sleep(interval)
    return {"done_ns": time.monotonic_ns(), "first_ns": first_ns, "total": total,
            "objects": objects, "reached": done(total, objects)}


async def s3_baseline(a: dict[str, Any]) -> dict[str, Any]:
    """put_object of the same files (same lines, same sizes), one after another. With
    `format` / `compression` other than plain NDJSON, each file is first encoded as the
    daemon writes it (gzip level 6, zstd level 3, Parquet with the same columns, codec
    and row groups) inside the timed phase, from data prepared before it (the lines, or
    the columns' values): the bare cost of the same work. With `multipart`, each file
    goes up as a multipart upload of `part_size` parts, `part_concurrency` at once (for
    the note: what the same S3 calls cost bare)."""
    factory = EventFactory(a["published_at"])
    files, lines_per_file = int(a["files"]), int(a["lines_per_file"])
    file_format, compression = a.get("format", "ndjson"), a.get("compression", "none")
    raw_sizes, sizes = [], []
    async with _s3_client(a) as s3:
        sources: list[Any] = []
        for n in range(files):
            numbers = range(n * lines_per_file, (n + 1) * lines_per_file)
            if file_format == "parquet":
                sources.append(_columns(factory, numbers))
            else:
                sources.append(b"".join(factory.delivery_body(i) + b"\n" for i in numbers))
            raw_sizes.append(sum(len(factory.delivery_body(i)) + 1 for i in numbers))
        phase = Phase()
        for n, source in enumerate(sources):
            body = (_parquet(source, compression, raw_sizes[n]) if file_format == "parquet"
                    else _compressed(source, compression))
            key = f"baseline/file-{n}.export"
            if a.get("multipart"):
                await _multipart(s3, a["bucket"], key, body, int(a["part_size"]),
                                 int(a["part_concurrency"]))
            else:
                await s3.put_object(Bucket=a["bucket"], Key=key, Body=body)
            sizes.append(len(body))
        result = phase.result()
    return {**result, "bytes": sum(sizes), "raw_bytes": sum(raw_sizes),
            "mib": sum(raw_sizes) / MIB}


def _compressed(raw: bytes, compression: str) -> bytes:
    if compression == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        return compressor.compress(raw) + compressor.flush()
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    return raw


def _columns(factory: EventFactory, numbers: range) -> dict[str, list[Any]]:
    """The Parquet columns' values of events `numbers`, as plain Python values."""
    events = [factory.event(i) for i in numbers]
    return {"id": [str(uuid.uuid4()) for _ in numbers],
            "seq": [i + 1 for i in numbers],
            "tenant": ["default"] * len(numbers),
            "name": [e["name"] for e in events],
            "published_at": [e["published_at"] for e in events],
            "payload": [orjson.dumps(e["payload"]) for e in events]}


def _parquet(columns: dict[str, list[Any]], compression: str, raw_bytes: int) -> bytes:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from eventstreamd.sinks.s3_encoders import ROW_GROUP_BYTES

    rows = len(columns["id"])
    table = pa.table({
        "id": pa.array(columns["id"], pa.string()),
        "seq": pa.array(columns["seq"], pa.int64()),
        "tenant": pa.array(columns["tenant"], pa.string()),
        "name": pa.array(columns["name"], pa.string()),
        "published_at": pc.cast(pa.array(columns["published_at"], pa.string()),
                                pa.timestamp("us", tz="UTC")),
        "payload": pa.array(columns["payload"], pa.string()),
    })
    out = io.BytesIO()
    pq.write_table(table, out, compression=compression, use_dictionary=["tenant", "name"],
                   row_group_size=max(1, rows * ROW_GROUP_BYTES // raw_bytes))
    return out.getvalue()


async def _multipart(s3: Any, bucket: str, key: str, body: bytes, part_size: int,
                     concurrency: int) -> None:
    upload = await s3.create_multipart_upload(Bucket=bucket, Key=key)
    upload_id = upload["UploadId"]
    slots = asyncio.Semaphore(concurrency)
    etags: dict[int, str] = {}

    async def part(number: int) -> None:
        async with slots:
            chunk = body[(number - 1) * part_size:number * part_size]
            answer = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                          PartNumber=number, Body=chunk)
            etags[number] = answer["ETag"]

    await asyncio.gather(*(part(n) for n in range(1, -(-len(body) // part_size) + 1)))
    await s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]})


COMMANDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ingest": ingest,
    "paced": paced,
    "publish_all": publish_all,
    "lmdb_baseline": lmdb_baseline,
    "webhook_baseline": webhook_baseline,
    "scrape_while_polled": scrape_while_polled,
    "fill_store": fill_store,
    "s3_create_bucket": s3_create_bucket,
    "s3_watch": s3_watch,
    "s3_baseline": s3_baseline,
    "js_ingest_baseline": js_ingest_baseline,
    "js_webhook_baseline": js_webhook_baseline,
    "js_fill": js_fill,
}


def main(argv: list[str]) -> int:
    command, args = argv[0], json.loads(argv[1])
    job = COMMANDS[command]
    result = job(args)
    if asyncio.iscoroutine(result):
        result = run_on_daemon_loop(result)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

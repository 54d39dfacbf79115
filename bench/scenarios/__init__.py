"""The scenarios: each starts its own daemon (own config, own temp data dir), drives it
from other processes, and measures a raw baseline in the same run.

Decisions:
- The orchestrator (this process) never carries load. Load generators,
  baselines, receivers and the bare servers are separate processes
  (`bench.worker`, `bench.receiver`, `bench.bareserver`); the daemon is
  `python -m eventstreamd run` with a TOML config written for the scenario.
- Throughput is counted where it is true: ingest by the publisher (a 200
  means fsync'd), webhook delivery at the receiver (arrival times), S3 in the
  bucket (bytes listed by moto). Baselines are timed the same way.
- Every row says how busy the processes were during the measured phase (CPU
  seconds / wall seconds; 1.0 = one core): above all the load generator's, to
  show it was not the bottleneck.
- Each wait is bounded in time and rounds; a scenario that fails reports a
  row with value null and the reason instead of ending the run.
- One module per backend (`lmdb`, `jetstream`), latency, S3, the webhook
  delivery controls (`controls`), replays (`replay`) and many integrations (`many`)
  apart; what twin scenarios on the two backends measure alike is in `shared`.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import SCENARIO_IDS
from ..context import Ctx
from ..rows import Row
from .controls import webhook_keyed, webhook_max_rate, webhook_strict
from .jetstream import js_ingest_ndjson, js_ingest_single, js_restart, js_scaleout, js_webhook_8
from .latency import capacity, latency
from .lmdb import (
    backlog_rss,
    ingest_ndjson,
    ingest_single,
    restart,
    webhook_1,
    webhook_8,
    webhook_fanout,
)
from .many import many_integrations
from .replay import replay
from .s3 import s3_gzip, s3_parquet, s3_upload, s3_zstd

SCENARIOS: dict[str, Callable[[Ctx], list[Row]]] = {
    "ingest-ndjson": ingest_ndjson,
    "ingest-single": ingest_single,
    "webhook-inflight-8": webhook_8,
    "webhook-inflight-1": webhook_1,
    "webhook-fanout-10": webhook_fanout,
    "webhook-ordered-strict": webhook_strict,
    "webhook-ordered-keyed": webhook_keyed,
    "webhook-max-rate": webhook_max_rate,
    "replay": replay,
    "latency-1000eps": latency,
    "capacity": capacity,
    "s3-upload": s3_upload,
    "s3-gzip": s3_gzip,
    "s3-zstd": s3_zstd,
    "s3-parquet": s3_parquet,
    "backlog-rss": backlog_rss,
    "restart": restart,
    "many-integrations": many_integrations,
    "jetstream-ingest-ndjson": js_ingest_ndjson,
    "jetstream-ingest-single": js_ingest_single,
    "jetstream-webhook-inflight-8": js_webhook_8,
    "jetstream-restart": js_restart,
    "jetstream-scaleout": js_scaleout,
}
assert tuple(SCENARIOS) == SCENARIO_IDS

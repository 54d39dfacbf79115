"""Benchmarks of the real daemon against raw baselines: `python -m bench [--quick]`.

See bench/README.md for the scenarios and how to read the results.
"""

# Every scenario the suite runs, in order; every one has at least one row in results.json.
SCENARIO_IDS = (
    "ingest-ndjson",
    "ingest-single",
    "webhook-inflight-8",
    "webhook-inflight-1",
    "webhook-fanout-10",
    # Per-integration delivery controls: strict and keyed order, and max_rate's accuracy.
    "webhook-ordered-strict",
    "webhook-ordered-keyed",
    "webhook-max-rate",
    # A replay of the stored backlog beside live traffic on the same integration.
    "replay",
    "latency-1000eps",
    "capacity",
    "s3-upload",
    # The same events as gzip and zstd NDJSON and as Parquet, each against the bare
    # client encoding and putting the same files.
    "s3-gzip",
    "s3-zstd",
    "s3-parquet",
    "backlog-rss",
    "restart",
    # A thousand integrations: idle CPU (LMDB and JetStream), /metrics and /healthz, 10
    # matching among them, memory, and a fan-out to 100.
    "many-integrations",
    # The same on the JetStream backend, each against bare nats-py on the same server.
    "jetstream-ingest-ndjson",
    "jetstream-ingest-single",
    "jetstream-webhook-inflight-8",
    "jetstream-restart",
    # Several daemons on one JetStream: the 10-integration fan-out with 1 and 2 daemons, and
    # what a delivery costs in CPU with 2 against 1 (also with 1,000 integrations).
    "jetstream-scaleout",
)

# The keys of every object in results.json.
RESULT_KEYS = ("scenario", "figure", "unit", "value", "baseline", "ratio", "target", "met")

"""The NATS JetStream backend of the `Store` interface (`storage.backend = "jetstream"`).

Every piece of state lives in JetStream, nothing of value on local disk:

- event log: stream `{prefix}_events` (subjects `{prefix}.ev.m`,
  `{prefix}.ev.c`); seq = stream sequence, `ingested_at` = JetStream time
  stamp, `max_age` = `storage.retention` (events.py);
- publish: one atomic batch per group commit (<= `jetstream.max_batch`
  events), a lone event as one publish; 200 only after the ack (events.py);
- integrations, cursors, sink state, logs, rejected events: stream
  `{prefix}_state`, a subject each, written in atomic batches with
  compare-and-set and fenced by an incarnation marker (state.py);
- waiting for new events: a headers-only RePublish of each commit to
  `{prefix}.wake`, plus a slow poll (events.py).

`store.py` puts the parts together and decides what an outage does;
`client.py` holds the connection and the raw requests nats-py lacks.

Measured while designing it, with small nats-py scripts against a local
server on a development VM (2 shared cores, ext4 on a virtual disk;
nats-server 2.15.1, nats-py 2.16.0, R1 file storage, `sync_interval:
always`; fsync latency drifted a lot there, so ranges). They guided the
design choices below; they are not a benchmark (the daemon's own figures,
each beside a raw baseline, are `make bench`'s: bench/README.md):

- atomic batch of 1,000 x 400 B: 20-30k events/s; 128: 5-13k/s; 32: ~2.5k/s;
  8: ~600/s; 1 message: one publish 0.7-1.8 ms (p50), a 1-message batch
  5-9 ms. A commit costs 3-4 fsyncs whatever its size (~50-80 batches/s), and
  2-8 commits in flight did not raise throughput: so group commit with one
  commit in flight, and a plain publish for a lone event.
- RePublish of every message to a subscribed daemon: ingest 20k -> 11.5k
  events/s (the client parsed every wake); one wake per commit: no cost.
- a fenced single write (CAS on another subject) p50 ~1.8 ms; a 2-message
  atomic batch p50 ~9.6 ms; a last-by-subject DIRECT.GET 0.4 ms.
- batched DIRECT.GET of 256 with headers: ~12-25k events/s read.
- a three-node cluster on one host (the README's recipe), R3, a webhook
  integration under load: SIGKILL of the streams' leader -> publishing 503
  ("no responders") for the 6-10 s of the election, then on; nothing
  acknowledged lost, nothing delivered twice.

Several daemons sharing one prefix share the integrations out through
leases (`lease.py`, used by `daemon/ownership.py`); the lease fences plug
into `StateStore._fence_headers`.
"""

from .store import JetStreamStore

__all__ = ["JetStreamStore"]

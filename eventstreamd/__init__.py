"""eventstreamd: an event-stream daemon (event log in LMDB or NATS JetStream -> webhooks, S3)."""

__version__ = "0.1.0"

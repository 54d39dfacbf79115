"""eventstreamd: a single-host event-stream daemon (LMDB log -> webhooks and S3)."""

__version__ = "0.1.0"

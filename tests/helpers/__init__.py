"""What the tests share (and the benchmarks reuse); no test module imports another.

- daemon.py: the real daemon as a subprocess on port 0 (`DaemonProcess`, the
  `daemon_factory` fixture's `Factory`), `eventstreamd listen` (`Listener`), TOML
  settings (`merge`) and `FAST`, the one set of quick webhook retries.
- backends.py: `EVERY_BACKEND` / `JETSTREAM_ONLY`, what a module's `BACKENDS` chooses;
  a daemon's JetStream settings with a stream prefix of its own.
- receiver.py: the one webhook receiver, scripted by responders, with its fault modes
  (statuses, Retry-After, delays, held requests, dropped connections, garbage, a seeded
  random mix).
- api.py: the one API client (`ApiClient`, every documented operation checked against
  the OpenAPI spec) and the integration bodies tests register.
- wait.py: the one bounded wait (`eventually`, `eventually_sync`).
- processes.py: `free_port`, waiting until a child process is ready, ending one.
- s3.py: moto's S3 server (`MotoServer`); nats_server.py: nats-server, one node or a
  three-node cluster; cluster.py: several daemons on one JetStream prefix and the
  SIGKILL failover scenario.
- control.py: the control socket (`Line`, `status`, `wait_settled`).
- store.py: the store opened in-process, to seed and to check what was stored.
- background.py: an event loop in a thread, for synchronous (hypothesis) tests.
"""

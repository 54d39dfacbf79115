"""Command line: `eventstreamd run | publish | tui | integrations | check-config | listen`.

The config is loaded once here and handed down; a bad config prints one line
naming the file and the key and exits 2. Nothing below this module calls
`sys.exit`. With no command, the help is printed.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

import anyio

from .config import Config, ConfigError, load_config
from .logs import setup_logging

CONFIG_ORDER = """\
config file: --config PATH, else $EVENTSTREAMD_CONFIG, else ./eventstreamd.toml when it
exists, else built-in defaults. Relative paths in it (storage.data_dir, control.socket)
are relative to the file's directory."""

RUN_EPILOG = f"""\
{CONFIG_ORDER}

signals: SIGINT or SIGTERM stop the daemon gracefully (in-flight requests and deliveries
get a grace period; what is not delivered stays for the next start).

exit codes: 0 stopped by a signal; 1 could not start (port in use, data_dir locked by
another daemon, store or socket errors, JetStream streams used before gone), said in
one line; 2 bad config, said in one line naming the file and the key.

Once started it writes {{data_dir}}/runtime.json (where it listens, its control socket)
for `publish`, `integrations` and `tui`; GET /healthz, /readyz and /metrics watch it.
"""


def _version() -> str:
    try:
        return version("eventstreamd")
    except PackageNotFoundError:
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="eventstreamd", formatter_class=raw,
        description="An event-stream daemon: an append-only event log streamed to webhooks "
                    "and S3.",
        epilog="quick start: `eventstreamd run` in one terminal, `eventstreamd listen` in "
               "another,\nthen `eventstreamd integrations create demo --webhook "
               "http://127.0.0.1:9000/`\nand `eventstreamd publish events.ndjson`. "
               "`eventstreamd COMMAND --help` tells more.")
    parser.add_argument("--version", action="version", version=f"eventstreamd {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground", formatter_class=raw,
                         description="Run the daemon in the foreground.", epilog=RUN_EPILOG)
    run.add_argument("--config", metavar="PATH", help="config file (TOML)")
    run.add_argument("--accept-new-streams", action="store_true",
                     help="JetStream: go on with new, empty streams where the ones this "
                          "data_dir's daemon used are gone (a wiped server) or were created "
                          "anew; without it such a start is refused")

    pub = sub.add_parser(
        "publish", help="send events (JSON object, array or NDJSON)", formatter_class=raw,
        description="Send events (one JSON object, a JSON array, or NDJSON) to the running "
                    "daemon, in batches of 1,000.",
        epilog=f"{CONFIG_ORDER}\n\nexit codes: 0 all accepted; 1 a failure (the message says "
               "how many events were\naccepted before it); 2 bad config or URL.")
    pub.add_argument("--config", metavar="PATH", help="config file (TOML)")
    pub.add_argument("file", nargs="?", default="-", help="input file, or - for stdin")
    pub.add_argument("--url", help="daemon URL, e.g. http://127.0.0.1:8080 (default: from "
                                   "the running daemon or the config)")
    pub.add_argument("--token", help="API token (default: $EVENTSTREAMD_TOKEN, auth.tokens, "
                                     "or {data_dir}/api_token)")

    tui = sub.add_parser("tui", help="live dashboard, attached to the daemon's control socket")
    where = tui.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="PATH", help="config file (TOML) naming the socket")
    where.add_argument("--socket", metavar="PATH", help="control socket path")

    from .integrations_cli import add_parser
    add_parser(sub)

    check = sub.add_parser(
        "check-config", help="validate a config file without starting anything",
        formatter_class=raw, description="Validate a config file; start and create nothing.",
        epilog=f"{CONFIG_ORDER}\n\nexit codes: 0 valid, 2 not (one line naming the file and "
               "the key).")
    check.add_argument("path", nargs="?", metavar="PATH", help="config file (TOML)")
    check.add_argument("--config", metavar="PATH", dest="config_option",
                       help="the same as PATH, as every other command spells it")

    listen = sub.add_parser(
        "listen", help="a local webhook receiver that prints every delivery",
        formatter_class=raw,
        description="A local webhook receiver: prints each delivery (headers, body, and the "
                    "signature check when a secret is known) and answers --status.",
        epilog="The secret: --secret, else webhook.signing_secret (and previous_signing_"
               "secret)\nof the config (--config, $EVENTSTREAMD_CONFIG or ./eventstreamd.toml)."
               "\nSIGINT or SIGTERM end it with exit code 0.")
    listen.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    listen.add_argument("--port", type=int, default=9000,
                        help="port (default: 9000; 0 picks a free one)")
    listen.add_argument("--status", type=int, default=200, metavar="CODE",
                        help="the answer: 200 (default); 400 = rejected, 5xx = retried")
    listen.add_argument("--secret", metavar="WHSEC",
                        help="Standard Webhooks secret (whsec_...) to check signatures with")
    listen.add_argument("--config", metavar="PATH", help="config file to take the secret from")
    return parser


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"eventstreamd: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _run(args: argparse.Namespace) -> int:
    from .daemon.lifecycle import Daemon, StartupError

    config = _load(args.config)
    setup_logging(config.log.level, config.log.format)
    failure: list[BaseException] = []
    try:
        # uvloop where available: the daemon is bound by event-loop overhead (socket
        # writes, callbacks) on its delivery and ingest paths; see bench/README.md.
        daemon = Daemon(config, accept_new_streams=args.accept_new_streams)
        anyio.run(daemon.run, backend_options={"use_uvloop": _have_uvloop()})
    except* StartupError as group:  # raised inside the daemon's task group
        failure.extend(group.exceptions)
    if failure:
        print(f"eventstreamd: {failure[0]}", file=sys.stderr)
        return 1
    return 0


def _publish(args: argparse.Namespace) -> int:
    from .apiclient import ClientError
    from .publisher import publish

    config = _load(args.config)
    try:
        if args.file == "-":
            if sys.stdin.isatty():
                print("eventstreamd publish: reading events from standard input (JSON or "
                      "NDJSON; end with Ctrl-D)...", file=sys.stderr, flush=True)
            publish(config, sys.stdin.buffer, url=args.url, token=args.token)
        else:
            with open(args.file, "rb") as fh:
                publish(config, fh, url=args.url, token=args.token)
    except OSError as exc:
        print(f"eventstreamd publish: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:  # PublishError too
        print(f"eventstreamd publish: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _tui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .tui.main import run_tui

    return run_tui(Path(args.socket).absolute() if args.socket
                   else _load(args.config).control_socket)


def _integrations(args: argparse.Namespace) -> int:
    from .apiclient import ClientError
    from .integrations_cli import run

    config = _load(args.config)
    try:
        return run(args, config)
    except ClientError as exc:
        print(f"eventstreamd integrations: {exc}", file=sys.stderr)
        return exc.exit_code


def _check_config(args: argparse.Namespace) -> int:
    if args.path and args.config_option and args.path != args.config_option:
        print("eventstreamd check-config: give the file once (PATH or --config PATH)",
              file=sys.stderr)
        return 2
    config = _load(args.path or args.config_option)
    if config.source == "<defaults>":
        print("no config file found (--config, $EVENTSTREAMD_CONFIG, ./eventstreamd.toml): "
              "the built-in defaults apply, and they are valid")
        return 0
    print(f"{config.source}: valid (data_dir {config.data_dir}, listens on "
          f"{config.server.host}:{config.server.port}, control socket {config.control_socket})")
    return 0


def _listen(args: argparse.Namespace) -> int:
    from .config import valid_signing_secret
    from .listen import run_listener

    if args.secret:
        if not valid_signing_secret(args.secret):
            print("eventstreamd listen: --secret must be whsec_ followed by base64 (as "
                  "webhook.signing_secret)", file=sys.stderr)
            return 2
        secrets: tuple[str, ...] = (args.secret,)
    else:
        secrets = _load(args.config).webhook.signing_secrets
    if not 100 <= args.status <= 599:
        print("eventstreamd listen: --status must be an HTTP status (100-599)", file=sys.stderr)
        return 2
    try:
        run_listener(args.host, args.port, args.status, secrets)
    except OSError as exc:
        print(f"eventstreamd listen: cannot listen on {args.host}:{args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"run": _run, "publish": _publish, "tui": _tui, "integrations": _integrations,
                "check-config": _check_config, "listen": _listen}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

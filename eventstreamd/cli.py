"""Command line: `eventstreamd run | publish | tui`, `--version`.

The config is loaded once here and handed down; a bad config prints one line
naming the file and the key and exits 2. Nothing below this module calls
`sys.exit`.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import anyio

from .config import Config, ConfigError, load_config
from .logs import setup_logging


def _version() -> str:
    try:
        return version("eventstreamd")
    except PackageNotFoundError:
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventstreamd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"eventstreamd {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", metavar="PATH", help="config file (TOML)")

    pub = sub.add_parser("publish", help="send events (JSON object, array or NDJSON)")
    pub.add_argument("--config", metavar="PATH", help="config file (TOML)")
    pub.add_argument("file", nargs="?", default="-", help="input file, or - for stdin")
    pub.add_argument("--url", help="daemon URL (default: from the running daemon or config)")
    pub.add_argument("--token", help="API token (default: $EVENTSTREAMD_TOKEN or from config)")

    tui = sub.add_parser("tui", help="live dashboard, attached to the daemon's control socket")
    where = tui.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="PATH", help="config file (TOML) naming the socket")
    where.add_argument("--socket", metavar="PATH", help="control socket path")
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
        anyio.run(Daemon(config).run, backend_options={"use_uvloop": _have_uvloop()})
    except* StartupError as group:  # raised inside the daemon's task group
        failure.extend(group.exceptions)
    if failure:
        print(f"eventstreamd: {failure[0]}", file=sys.stderr)
        return 1
    return 0


def _publish(args: argparse.Namespace) -> int:
    from .publisher import PublishError, publish

    config = _load(args.config)
    token = args.token or os.environ.get("EVENTSTREAMD_TOKEN")
    try:
        if args.file == "-":
            publish(config, sys.stdin.buffer, url=args.url, token=token)
        else:
            with open(args.file, "rb") as fh:
                publish(config, fh, url=args.url, token=token)
    except OSError as exc:
        print(f"eventstreamd publish: {exc}", file=sys.stderr)
        return 1
    except PublishError as exc:
        print(f"eventstreamd publish: {exc}", file=sys.stderr)
        return 1
    return 0


def _tui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .tui.main import run_tui

    return run_tui(Path(args.socket) if args.socket else _load(args.config).control_socket)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": _run, "publish": _publish, "tui": _tui}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

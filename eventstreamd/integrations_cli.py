"""`eventstreamd integrations ...`: the configuration API from the command line.

Decisions:
- Every subcommand is one or two calls of the HTTP API (never the control
  socket: creating, patching and deleting need the API's token anyway), with
  the daemon and the token found the way `publish` finds them
  (`apiclient.py`).
- Output: a readable table or key/value block by default; `--json` prints
  the API's own JSON (indented) on stdout, so scripts get exactly what the
  API documents. Operations the API answers without a body (delete, a
  rejected event's retry and delete) print nothing with `--json`. Errors are
  one line on stderr.
- Exit codes scripts can rely on: 0 done; 1 the daemon refused or failed the
  request (400, 409, 502 for a retry the receiver refused, ...); 2 usage,
  config or input-file error; 3 the daemon cannot be reached; 4 not found.
- `create`/`patch` build the API's body from flags (`--webhook URL`,
  `--s3-bucket ...`, `--events`, `--entities`, dates), from a JSON or TOML
  file (`--file`, the API's own field names), or both: flags override the
  file. AWS credentials default to `$AWS_ACCESS_KEY_ID` /
  `$AWS_SECRET_ACCESS_KEY`, so they need not appear in a command line.
- A rejected event can be named by its id or by the original event's id
  (what the publisher knows); the latter is looked up in the list.
- A webhook's delivery controls have flags of their own (`--signing-secret`,
  `--header NAME:VALUE` (repeatable), `--max-rate`, `--ordered` /
  `--no-ordered`, `--ordering-key`, `--stop-after-failing`). A PATCH
  replaces the whole target, so `patch` with webhook flags (and no
  `--file`) starts from the integration's current `callback_parameters` and
  changes what the flags say (as GET shows them: secrets masked, which the
  daemon takes as "keep the stored one").
  `rotate-secret ID` prints the new secret, the only time it is shown.
- Replays: `replay ID --from T [--to T] [--events ..] [--entities ..]
  [--rate N] [--dry-run] [--wait]` (T: RFC 3339, or a duration meaning that
  long ago: `--from 2h`), `replays ID`, `replay-cancel ID RID`. `--wait`
  follows the replay until it ends (exit 0 completed, 1 cancelled), with a
  progress bar on stderr when stderr is a terminal and a plain line every
  few seconds otherwise; Ctrl-C stops following, never the replay.
- Ids are percent-encoded in paths (`api_path()`): whatever the user typed names
  one integration or event, never another route.
- A `--file` is read up to `config.MAX_FILE` (1 MiB; a body is a few hundred
  bytes), so `--file /dev/zero` is refused at once; a parameter group that is
  not an object, or TOML nested too deeply, is one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from .apiclient import (
    EXIT_USAGE,
    ClientError,
    HttpClient,
    resolve_target,
    resolve_token,
)
from .config import Config, parse_toml, read_capped
from .timeutil import since

# ------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
          out: Any = None) -> None:
    """A plain aligned table; the last column is never padded (it may be long)."""
    out = out or sys.stdout
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        print("  ".join([*padded, row[-1]]).rstrip(), file=out)


def pairs(items: Sequence[tuple[str, Any]], *, out: Any = None) -> None:
    out = out or sys.stdout
    width = max(len(k) for k, _ in items)
    for key, value in items:
        if value is not None:
            print(f"{key + ':':<{width + 1}} {value}", file=out)


def dump(data: Any) -> None:
    if data is not None:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def kind_of(integration: dict[str, Any]) -> str:
    if "callback_parameters" in integration:
        return "webhook"
    if "s3_parameters" in integration:
        return "s3"
    return "?"


def target_of(integration: dict[str, Any]) -> str:
    webhook = integration.get("callback_parameters")
    if isinstance(webhook, dict):
        return str(webhook.get("callback_url", ""))
    s3 = integration.get("s3_parameters")
    if isinstance(s3, dict):
        prefix = s3.get("key_prefix")
        return f"s3://{s3.get('bucket', '')}" + (f"/{prefix}" if prefix else "")
    return ""


def filter_of(integration: dict[str, Any]) -> str:
    conditions = integration.get("filter_conditions") or {}
    parts = []
    if conditions.get("event_filter") is not None:
        parts.append("events=" + ",".join(conditions["event_filter"]))
    if conditions.get("entity_filter") is not None:
        parts.append("entities=" + ",".join(conditions["entity_filter"]))
    return " ".join(parts) or "all events"


def ordering_of(webhook: dict[str, Any]) -> str | None:
    if not webhook.get("ordered"):
        return None
    key = webhook.get("ordering_key")
    return f"per {key} (one at a time per value)" if key else "strict (one at a time)"


def show_integration(integration: dict[str, Any]) -> None:
    items: list[tuple[str, Any]] = [
        ("id", integration.get("id")),
        ("status", integration.get("status")),
        ("type", f"{kind_of(integration)}, {integration.get('integration_type')}"),
        ("target", target_of(integration)),
    ]
    webhook = integration.get("callback_parameters") or {}
    s3 = integration.get("s3_parameters") or {}
    headers = webhook.get("headers") or {}
    items += [("api_key", webhook.get("api_key")),
              ("signing_secret", webhook.get("signing_secret")),
              ("headers", ", ".join(f"{k}: {v}" for k, v in headers.items()) or None),
              ("max_rate", f"{webhook['max_rate']:g}/s" if webhook.get("max_rate") else None),
              ("order", ordering_of(webhook)),
              ("stop_after_failing", webhook.get("stop_after_failing")),
              ("region", s3.get("aws_region")),
              ("access_key_id", s3.get("aws_access_key_id")),
              ("secret_access_key", s3.get("aws_secret_access_key")),
              ("compression", s3.get("compression")), ("format", s3.get("format")),
              ("key_template", s3.get("key_template")),
              ("starts_at", integration.get("starts_at")),
              ("ends_at", integration.get("ends_at")), ("filter", filter_of(integration))]
    pairs(items)


# --------------------------------------------------------------- the parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (TOML) of the daemon")
    parser.add_argument("--url", help="daemon URL, e.g. http://127.0.0.1:8080 "
                                      "(default: the running daemon's runtime.json)")
    parser.add_argument("--token", help="API token (default: $EVENTSTREAMD_TOKEN, "
                                        "auth.tokens, or {data_dir}/api_token)")
    parser.add_argument("--json", action="store_true",
                        help="print the API's JSON instead of a table")


def _body_flags(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--file", metavar="PATH",
                        help="the body as JSON or TOML (the API's field names); - for stdin; "
                             "flags override it")
    hook = parser.add_argument_group("webhook target")
    hook.add_argument("--webhook", metavar="URL", help="callback_url: one POST per event")
    hook.add_argument("--api-key", help="sent as Authorization: Bearer <api_key>")
    hook.add_argument("--signing-secret", metavar="WHSEC",
                      help="this integration's own Standard Webhooks secret (whsec_...), "
                           "instead of webhook.signing_secret")
    hook.add_argument("--header", metavar="NAME:VALUE", action="append",
                      help="an extra request header (repeatable)")
    hook.add_argument("--max-rate", metavar="PER_SECOND", type=float,
                      help="at most this many deliveries per second")
    hook.add_argument("--ordered", action=argparse.BooleanOptionalAction, default=None,
                      help="deliver in sequence order (one at a time, or per --ordering-key)")
    hook.add_argument("--ordering-key", metavar="PATH",
                      help="a dot path into the payload (order_id, customer.id): events with "
                           "the same value go in order, others in parallel; needs --ordered")
    hook.add_argument("--stop-after-failing", metavar="DURATION",
                      help="stop the integration after failing this long (e.g. 2d; 0 = never)")
    s3 = parser.add_argument_group("S3 target")
    s3.add_argument("--s3-bucket", metavar="BUCKET")
    s3.add_argument("--s3-region", metavar="REGION", help="aws_region (default: us-east-1)")
    s3.add_argument("--s3-prefix", metavar="PREFIX", help="key_prefix")
    s3.add_argument("--aws-access-key-id", metavar="ID",
                    help="default: $AWS_ACCESS_KEY_ID")
    s3.add_argument("--aws-secret-access-key", metavar="SECRET",
                    help="default: $AWS_SECRET_ACCESS_KEY")
    s3.add_argument("--s3-compression", choices=("none", "gzip", "zstd"),
                    help="compression (default: none); NDJSON keys gain .gz / .zst")
    s3.add_argument("--s3-format", choices=("ndjson", "parquet"),
                    help="file format (default: ndjson); parquet needs eventstreamd[parquet] "
                         "on the daemon's host")
    s3.add_argument("--s3-key-template", metavar="TEMPLATE",
                    help="key_template, e.g. '{key_prefix}/date={date}/{tenant}-{first_seq}' "
                         "(placeholders {key_prefix} {tenant} {timestamp} {random} {date} "
                         "{hour} {first_seq} {last_seq}; needs {random} or {first_seq})")
    what = parser.add_argument_group("which events")
    what.add_argument("--events", metavar="NAMES",
                      help="event_filter: comma-separated names, e.g. order.created")
    what.add_argument("--entities", metavar="ENTITIES",
                      help="entity_filter: comma-separated entities, e.g. order,return")
    if creating:
        when = parser.add_argument_group("when")
        when.add_argument("--temporary", action="store_true",
                          help="a temporary integration: replays --starts-at..--ends-at, "
                               "then stops")
        when.add_argument("--starts-at", metavar="RFC3339",
                          help="replay from this time (default: events from now on)")
        when.add_argument("--ends-at", metavar="RFC3339", help="temporary integrations only")


def add_parser(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    _common(common)
    parser = sub.add_parser(
        "integrations", help="list, create, change and inspect integrations (HTTP API)",
        description="Manage integrations through the running daemon's HTTP API.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def leaf(name: str, help_text: str, *ids: str, parent: Any = commands) -> Any:
        command = parent.add_parser(name, help=help_text, parents=[common],
                                    description=help_text[0].upper() + help_text[1:] + ".")
        for argument in ids:
            command.add_argument(argument, metavar=argument.upper())
        return command

    leaf("list", "list the integrations")
    leaf("show", "show one integration", "id")
    create = leaf("create", "register an integration (it starts at once)")
    create.add_argument("id", nargs="?", metavar="ID",
                        help="1-50 of a-z, 0-9 and '-' (or 'id' in --file)")
    _body_flags(create, creating=True)
    patch = leaf("patch", "change a stopped integration's target or filter", "id")
    _body_flags(patch, creating=False)
    leaf("delete", "delete an integration with its log and rejected events", "id")
    rotate = leaf("rotate-secret", "give a webhook a new signing secret (the previous one "
                                   "signs too for webhook.rotation_overlap)", "id")
    rotate.add_argument("--signing-secret", metavar="WHSEC",
                        help="the new secret (default: a generated one)")
    leaf("start", "start (resume) an integration", "id")
    leaf("stop", "stop an integration; it resumes where it stopped", "id")
    leaf("logs", "the integration's newest log entries", "id")
    replay = leaf("replay", "deliver part of the log again, beside live traffic", "id")
    replay.add_argument("--from", dest="starts_at", metavar="T", required=True,
                        help="the events ingested from T on: RFC 3339, or a duration ago "
                             "(2h, 30m)")
    replay.add_argument("--to", dest="ends_at", metavar="T",
                        help="... up to T (default: now)")
    replay.add_argument("--events", metavar="NAMES",
                        help="only these event names (default: the integration's filter)")
    replay.add_argument("--entities", metavar="ENTITIES", help="only these entities")
    replay.add_argument("--rate", metavar="PER_SECOND", type=float,
                        help="at most this many replayed deliveries per second")
    replay.add_argument("--dry-run", action="store_true",
                        help="only count the events it would deliver")
    replay.add_argument("--wait", action="store_true",
                        help="follow it until it completes (progress on stderr)")
    leaf("replays", "an integration's replays, newest first", "id")
    cancel = leaf("replay-cancel", "cancel a running or paused replay", "id")
    cancel.add_argument("replay_id", metavar="REPLAY_ID")
    rejected = commands.add_parser("rejected", help="events the receiver rejected (HTTP 400)",
                                   description="Events the receiver rejected (HTTP 400) or "
                                               "that could never be sent, kept for retry.")
    actions = rejected.add_subparsers(dest="rejected_action", metavar="ACTION", required=True)
    leaf("list", "list rejected events, newest first", "id", parent=actions)
    for name, text in (("show", "show a rejected event: its context and the event"),
                       ("retry", "deliver a rejected event once more; removed when delivered"),
                       ("delete", "delete a rejected event")):
        command = leaf(name, text, "id", parent=actions)
        command.add_argument("rejected_id", metavar="REJECTED_ID",
                             help="the rejected event's id, or the original event's id")


EPILOG = """\
The daemon and its token are found as for `publish`: --url, else the running
daemon's {data_dir}/runtime.json, else server.host/port; --token,
$EVENTSTREAMD_TOKEN, auth.tokens, or {data_dir}/api_token.

examples:
  eventstreamd integrations create orders --webhook https://erp.example.com/events \\
      --entities order
  eventstreamd integrations create archive --s3-bucket my-archive --s3-region eu-west-1
  eventstreamd integrations create lake --s3-bucket my-lake --s3-format parquet \
      --s3-compression zstd --s3-key-template '{key_prefix}/date={date}/{tenant}-{first_seq}'
  eventstreamd integrations list --json
  eventstreamd integrations rejected list orders
  eventstreamd integrations patch orders --max-rate 50 --ordered --ordering-key order_id
  eventstreamd integrations rotate-secret orders
  eventstreamd integrations replay orders --from 2h --events order.created --dry-run
  eventstreamd integrations replay orders --from 2024-06-01T00:00:00Z --rate 50 --wait

exit codes: 0 done, 1 refused or failed by the daemon, 2 usage or config error,
3 daemon unreachable, 4 not found.
"""


# ------------------------------------------------------------------ bodies


def _load_file(path: str) -> dict[str, Any]:
    """The body in `path` (- for stdin): JSON, or TOML; at most `MAX_FILE` bytes."""
    try:
        if path == "-":
            raw = read_capped(sys.stdin.buffer)
        else:
            with open(path, "rb") as fh:
                raw = read_capped(fh)
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    except ValueError as exc:
        raise ClientError(f"{path}: {exc}", EXIT_USAGE) from None
    data: Any = None
    if not path.endswith(".toml"):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
    if data is None:
        try:
            data = parse_toml(raw)
        except ValueError as exc:
            raise ClientError(f"{path}: neither JSON nor TOML ({exc})", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise ClientError(f"{path}: expected an object (the API's integration fields)",
                          EXIT_USAGE)
    return data


def _group(body: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    """A copy of the object `body[key]` (a parameter group) that flags add to; a group
    that is there but not an object is a usage error, said in one line."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientError(f"{source}: '{key}' must be an object (the API's field), not "
                          f"{type(value).__name__}", EXIT_USAGE)
    return dict(value)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _headers(given: list[str] | None) -> dict[str, str]:
    headers = {}
    for item in given or ():
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ClientError(f"--header {item!r}: expected NAME:VALUE", EXIT_USAGE)
        headers[name.strip()] = value.strip()
    return headers


def _controls(args: argparse.Namespace) -> dict[str, Any]:
    """The webhook delivery controls given as flags, by their API names."""
    controls: dict[str, Any] = {}
    for field, value in (("signing_secret", args.signing_secret),
                         ("max_rate", args.max_rate), ("ordered", args.ordered),
                         ("ordering_key", args.ordering_key),
                         ("stop_after_failing", args.stop_after_failing)):
        if value is not None:
            controls[field] = value
    if args.header:
        controls["headers"] = _headers(args.header)
    return controls


def build_body(args: argparse.Namespace, creating: bool) -> dict[str, Any]:
    body = _load_file(args.file) if args.file else {}
    source = args.file or "the flags"
    for key in ("callback_parameters", "s3_parameters", "filter_conditions"):
        _group(body, key, source)  # checked even where no flag adds to it
    controls = _controls(args)
    if args.webhook or args.api_key or controls:
        hook = _group(body, "callback_parameters", source)
        if args.webhook:
            hook["callback_url"] = args.webhook
        if args.api_key:
            hook["api_key"] = args.api_key
        if "headers" in controls:
            hook["headers"] = {**(hook.get("headers") or {}), **controls.pop("headers")}
        hook.update(controls)
        body["callback_parameters"] = hook
        body.pop("s3_parameters", None)
    s3_flags = (args.s3_bucket, args.s3_region, args.s3_prefix, args.aws_access_key_id,
                args.aws_secret_access_key, args.s3_compression, args.s3_format,
                args.s3_key_template)
    if any(s3_flags):
        s3 = _group(body, "s3_parameters", source)
        for key, value in zip(("bucket", "aws_region", "key_prefix", "aws_access_key_id",
                               "aws_secret_access_key", "compression", "format",
                               "key_template"), s3_flags, strict=True):
            if value:
                s3[key] = value
        s3.setdefault("aws_region", "us-east-1")
        for key, env in (("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
                         ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")):
            if key not in s3 and os.environ.get(env):
                s3[key] = os.environ[env]
        body["s3_parameters"] = s3
        if args.webhook is None and args.api_key is None and not _controls(args):
            body.pop("callback_parameters", None)
    if args.events is not None or args.entities is not None:
        conditions = _group(body, "filter_conditions", source)
        if args.events is not None:
            conditions["event_filter"] = _split(args.events)
        if args.entities is not None:
            conditions["entity_filter"] = _split(args.entities)
        body["filter_conditions"] = conditions
    if creating:
        if args.id:
            body["id"] = args.id
        if args.temporary:
            body["integration_type"] = "temporary"
        body.setdefault("integration_type", "permanent")
        if args.starts_at:
            body["starts_at"] = args.starts_at
        if args.ends_at:
            body["ends_at"] = args.ends_at
        if "id" not in body:
            raise ClientError("create needs an ID (or 'id' in --file)", EXIT_USAGE)
        if "callback_parameters" not in body and "s3_parameters" not in body:
            raise ClientError("create needs a target: --webhook URL, or --s3-bucket BUCKET "
                              "(or callback_parameters / s3_parameters in --file)", EXIT_USAGE)
    elif not body:
        raise ClientError("nothing to change: give --webhook, --api-key, a delivery control "
                          "(--max-rate, --ordered, ...), --s3-..., --events, --entities or "
                          "--file", EXIT_USAGE)
    return body


# ---------------------------------------------------------------- commands


def api_path(client: HttpClient, *parts: str) -> str:
    """An API path under the configuration API, each id percent-encoded: an id with '/',
    '?', '#', '%' or spaces names that id, never another route."""
    return "/".join([client.api_base, *(urllib.parse.quote(p, safe="") for p in parts)])


def _rejected_id(client: HttpClient, integration_id: str, given: str) -> str:
    """The rejected event's id, also when `given` is the original event's id."""
    listed = client.call("GET", api_path(client, integration_id, "rejected_events")) or {}
    entries = listed.get("rejected_events") or []
    if any(e.get("id") == given for e in entries):
        return given
    for entry in entries:
        if entry.get("event_id") == given:
            return str(entry["id"])
    return given


def run(args: argparse.Namespace, config: Config) -> int:
    client = HttpClient(resolve_target(config, args.url), resolve_token(config, args.token),
                        api_base=f"{config.server.base_path}/eventstream")
    try:
        action = args.action if args.action != "rejected" else f"rejected-{args.rejected_action}"
        return COMMANDS[action](client, args)
    finally:
        client.close()


def _list(client: HttpClient, args: argparse.Namespace) -> int:
    result = client.call("GET", client.api_base)
    if args.json:
        dump(result)
        return 0
    items = sorted(result.get("integrations") or [], key=lambda i: i.get("id", ""))
    if not items:
        print("no integrations (create one: eventstreamd integrations create ID "
              "--webhook URL)")
        return 0
    table(["ID", "KIND", "TYPE", "STATUS", "FILTER", "TARGET"],
          [[i.get("id"), kind_of(i), i.get("integration_type"), i.get("status"), filter_of(i),
            target_of(i)] for i in items])
    return 0


def _one(method: str, suffix: tuple[str, ...],
         done: str) -> Callable[[HttpClient, argparse.Namespace], int]:
    def command(client: HttpClient, args: argparse.Namespace) -> int:
        result = client.call(method, api_path(client, args.id, *suffix))
        if args.json:
            dump(result)
        elif done:
            print(done.format(id=args.id, status=(result or {}).get("status")))
        else:
            show_integration(result)
        return 0
    return command


def _create(client: HttpClient, args: argparse.Namespace) -> int:
    result = client.call("POST", client.api_base, build_body(args, creating=True))
    if args.json:
        dump(result)
    else:
        print(f"created {result['id']} ({kind_of(result)} to {target_of(result)}); "
              f"status {result['status']}")
    return 0


def _patch(client: HttpClient, args: argparse.Namespace) -> int:
    body = build_body(args, creating=False)
    hook = body.get("callback_parameters")
    if isinstance(hook, dict) and not args.file:
        # A PATCH replaces the target: flags change the current one (its secrets come back
        # masked, which the daemon reads as "keep the stored ones").
        current = client.call("GET", api_path(client, args.id)) or {}
        stored = current.get("callback_parameters")
        if not isinstance(stored, dict):
            if "callback_url" in hook:
                stored = {}  # an S3 integration becoming a webhook
            else:
                raise ClientError(f"{args.id} is not a webhook integration: give --webhook "
                                  "URL", EXIT_USAGE)
        merged = {**stored, **hook}
        if "headers" in hook:
            merged["headers"] = {**(stored.get("headers") or {}), **hook["headers"]}
        if hook.get("ordered") is False and "ordering_key" not in hook:
            merged.pop("ordering_key", None)  # --no-ordered: no lanes either
        body["callback_parameters"] = merged
    result = client.call("PATCH", api_path(client, args.id), body)
    if args.json:
        dump(result)
    else:
        print(f"updated {result['id']}; start it again with: eventstreamd integrations start "
              f"{result['id']}" if result.get("status") == "stopped" else
              f"updated {result['id']}")
    return 0


def _rotate_secret(client: HttpClient, args: argparse.Namespace) -> int:
    body = {"signing_secret": args.signing_secret} if args.signing_secret else None
    result = client.call("POST", api_path(client, args.id, "_rotate_secret"), body)
    if args.json:
        dump(result)
    else:
        print(f"{args.id}: new signing secret (shown once; the previous one signs too for "
              f"webhook.rotation_overlap):\n{result['signing_secret']}")
    return 0


def _delete(client: HttpClient, args: argparse.Namespace) -> int:
    client.call("DELETE", api_path(client, args.id))
    if not args.json:
        print(f"deleted {args.id}")
    return 0


def _listing(client: HttpClient, args: argparse.Namespace, path: str, key: str,
             what: str, headers: list[str], row: Callable[[dict[str, Any]], list[Any]]) -> int:
    """A list of an integration's (`GET .../{path}`, the items under `key`): the answer
    with `--json`, else a table, or "no <what>"."""
    result = client.call("GET", api_path(client, args.id, path))
    if args.json:
        dump(result)
        return 0
    items = result.get(key) or []
    if not items:
        print(f"{args.id}: no {what}")
        return 0
    table(headers, [row(item) for item in items])
    return 0


def _logs(client: HttpClient, args: argparse.Namespace) -> int:
    return _listing(client, args, "logs", "entries", "log entries", ["AT", "ACTION", "REASON"],
                    lambda e: [e.get("created_at"), e.get("action"), e.get("reason")])


def _rejected_list(client: HttpClient, args: argparse.Namespace) -> int:
    return _listing(
        client, args, "rejected_events", "rejected_events", "rejected events",
        ["REJECTED ID", "REJECTED AT", "EVENT ID", "SEQ", "HTTP", "ATTEMPTS", "ANSWER"],
        lambda e: [e.get("id"), e.get("created_at"), e.get("event_id"), e.get("seq"),
                   e.get("status"), e.get("attempts"), e.get("reason")])


def _rejected_show(client: HttpClient, args: argparse.Namespace) -> int:
    rejected_id = _rejected_id(client, args.id, args.rejected_id)
    result = client.call("GET", api_path(client, args.id, "rejected_events", rejected_id))
    if args.json:
        dump(result)
        return 0
    context = dict(result.pop("rejection", None) or {})
    pairs([("rejected id", context.get("id", rejected_id)),
           ("rejected at", context.get("created_at")),
           ("event id", context.get("event_id")), ("seq", context.get("seq")),
           ("HTTP status", context.get("status")), ("attempts", context.get("attempts")),
           ("answer", context.get("reason")),
           ("retryable", None if context.get("deliverable", True) else "no")])
    print("event:")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


def _rejected_retry(client: HttpClient, args: argparse.Namespace) -> int:
    rejected_id = _rejected_id(client, args.id, args.rejected_id)
    client.call("POST", api_path(client, args.id, "rejected_events", rejected_id, "_retry"))
    if not args.json:
        print(f"rejected event {rejected_id} delivered and removed")
    return 0


def _rejected_delete(client: HttpClient, args: argparse.Namespace) -> int:
    rejected_id = _rejected_id(client, args.id, args.rejected_id)
    client.call("DELETE", api_path(client, args.id, "rejected_events", rejected_id))
    if not args.json:
        print(f"rejected event {rejected_id} deleted")
    return 0


# ---------------------------------------------------------------- replays

FOLLOW_EVERY = 0.5  # seconds between looks while following a replay
PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
BAR = 30


def replay_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"starts_at": since(args.starts_at)}
    if args.ends_at:
        body["ends_at"] = since(args.ends_at)
    if args.events is not None or args.entities is not None:
        body["filter_conditions"] = {
            **({"event_filter": _split(args.events)} if args.events is not None else {}),
            **({"entity_filter": _split(args.entities)} if args.entities is not None else {})}
    if args.rate is not None:
        body["max_rate"] = args.rate
    if args.dry_run:
        body["dry_run"] = True
    return body


def progress_line(replay: dict[str, Any], bar: bool) -> str:
    events, delivered = int(replay.get("events") or 0), int(replay.get("delivered") or 0)
    share = delivered / events if events else 1.0
    counts = f"{delivered:,}/{events:,} events ({share:.0%}) {replay.get('status')}"
    if not bar:
        return f"replay {replay.get('replay_id')}: {counts}"
    filled = round(share * BAR)
    return f"\r[{'#' * filled}{'.' * (BAR - filled)}] {counts}\x1b[K"


def _replay(client: HttpClient, args: argparse.Namespace) -> int:
    result = client.call("POST", api_path(client, args.id, "_replay"), replay_body(args))
    if args.dry_run:
        if args.json:
            dump(result)
        else:
            print(f"{args.id}: {result['events']:,} events would be replayed")
        return 0
    if args.json and not args.wait:
        dump(result)
        return 0
    replay_id = str(result["replay_id"])
    if not args.json:
        print(f"replay {replay_id} of {args.id} started: {result['events']:,} events "
              f"({result['status']})")
    if not args.wait:
        print(f"follow it with: eventstreamd integrations replays {args.id}")
        return 0
    return _follow(client, args, replay_id)


def _follow(client: HttpClient, args: argparse.Namespace, replay_id: str) -> int:
    bar = sys.stderr.isatty()
    last_line = 0.0
    replay: dict[str, Any] = {}
    try:
        while True:
            listed = client.call("GET", api_path(client, args.id, "replays")) or {}
            replay = next((r for r in listed.get("replays") or []
                           if r.get("replay_id") == replay_id), {})
            if not replay:
                raise ClientError(f"replay {replay_id} is gone (its integration was "
                                  "deleted?)", 1)
            finished = replay.get("status") in ("completed", "cancelled")
            if bar:
                sys.stderr.write(progress_line(replay, True))
                sys.stderr.flush()
            elif finished or time.monotonic() - last_line >= PLAIN_EVERY:
                print(progress_line(replay, False), file=sys.stderr)
                last_line = time.monotonic()
            if finished:
                break
            time.sleep(FOLLOW_EVERY)
    except KeyboardInterrupt:
        if bar:
            sys.stderr.write("\n")
        print(f"stopped following; replay {replay_id} goes on (cancel it with: "
              f"eventstreamd integrations replay-cancel {args.id} {replay_id})",
              file=sys.stderr)
        return 130
    if bar:
        sys.stderr.write("\n")
    if args.json:
        dump(replay)
    else:
        print(f"replay {replay_id} {replay['status']}: {replay.get('delivered', 0):,} of "
              f"{replay.get('events', 0):,} events delivered")
    return 0 if replay.get("status") == "completed" else 1


def _replays(client: HttpClient, args: argparse.Namespace) -> int:
    return _listing(
        client, args, "replays", "replays", "replays",
        ["REPLAY", "STATUS", "PROGRESS", "CREATED", "FINISHED", "RANGE"],
        lambda r: [r.get("replay_id"), r.get("status"),
                   f"{r.get('delivered', 0):,}/{r.get('events', 0):,}", r.get("created_at"),
                   r.get("finished_at"), f"{r.get('starts_at')} .. {r.get('ends_at')}"])


def _replay_cancel(client: HttpClient, args: argparse.Namespace) -> int:
    result = client.call("DELETE", api_path(client, args.id, "replays", args.replay_id))
    if args.json:
        dump(result)
    else:
        print(f"replay {args.replay_id} {result['status']} after {result['delivered']:,} of "
              f"{result['events']:,} events")
    return 0


COMMANDS: dict[str, Callable[[HttpClient, argparse.Namespace], int]] = {
    "list": _list,
    "show": _one("GET", (), ""),
    "create": _create,
    "patch": _patch,
    "delete": _delete,
    "rotate-secret": _rotate_secret,
    "start": _one("POST", ("_start",), "{id}: {status}"),
    "stop": _one("POST", ("_stop",), "{id}: {status}"),
    "logs": _logs,
    "rejected-list": _rejected_list,
    "rejected-show": _rejected_show,
    "rejected-retry": _rejected_retry,
    "rejected-delete": _rejected_delete,
    "replay": _replay,
    "replays": _replays,
    "replay-cancel": _replay_cancel,
}

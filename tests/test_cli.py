"""The command line against real daemons: every `integrations` subcommand, `listen` receiving
real deliveries, `check-config`, paths relative to the config file, help and exit codes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import FAST, DaemonProcess, Factory, Listener, merge
from tests.helpers.wait import eventually_sync

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SIGNED = merge(FAST, {"webhook": {"signing_secret": SECRET}})


def cli(*args: str, cwd: Path | None = None, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstreamd", *args], cwd=cwd,
                          input=stdin, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture
def listeners(tmp_path: Path) -> Any:
    started: list[Listener] = []

    def start(*args: str) -> Listener:
        listener = Listener(tmp_path, *args)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


def test_every_integrations_subcommand(daemon_factory: Factory, listeners: Any,
                                       tmp_path: Path) -> None:
    d = daemon_factory(SIGNED)
    refusing = listeners("--status", "400")
    accepting = listeners("--secret", SECRET)

    def es(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = cli("integrations", *args, "--config", str(d.config_path))
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result

    def js(*args: str) -> Any:
        return json.loads(es(*args, "--json").stdout)

    out = es("list").stdout
    assert "no integrations" in out
    out = es("create", "shop", "--webhook", f"{refusing.url}hooks", "--entities", "order").stdout
    assert "created shop" in out and "running" in out
    listed = js("list")["integrations"]
    assert [i["id"] for i in listed] == ["shop"]
    table = es("list").stdout.splitlines()
    assert table[0].split() == ["ID", "KIND", "TYPE", "STATUS", "FILTER", "TARGET"]
    assert table[1].split()[:4] == ["shop", "webhook", "permanent", "running"]
    shown = js("show", "shop")
    assert shown["callback_parameters"]["callback_url"] == f"{refusing.url}hooks"
    assert "entities=order" in es("show", "shop").stdout

    # A rejection, matched to the published event by its id.
    published = cli("publish", "--config", str(d.config_path), "-",
                    stdin='{"id": "evt-1", "name": "order.created", "payload": {"n": 1}}')
    assert published.returncode == 0 and "published 1 event " in published.stderr
    eventually_sync(lambda: js("rejected", "list", "shop")["rejected_events"], what="the rejection")
    [entry] = js("rejected", "list", "shop")["rejected_events"]
    assert (entry["event_id"], entry["status"], entry["attempts"]) == ("evt-1", 400, 1)
    assert "eventstreamd listen" in entry["reason"]  # the receiver's own answer
    assert refusing.deliveries() == 1 and "evt-1" in refusing.output()
    rows = es("rejected", "list", "shop").stdout.splitlines()
    assert rows[0].split()[:4] == ["REJECTED", "ID", "REJECTED", "AT"]
    assert entry["id"] in rows[1] and "evt-1" in rows[1]
    detail = es("rejected", "show", "shop", "evt-1").stdout  # by the event's own id
    flat = " ".join(detail.split())
    assert "HTTP status: 400" in flat and f"rejected id: {entry['id']}" in flat
    assert '"n": 1' in detail
    assert js("rejected", "show", "shop", entry["id"])["rejection"]["event_id"] == "evt-1"
    failed = es("rejected", "retry", "shop", "evt-1", code=1)
    assert "rejected the event again" in failed.stderr

    # Stop, point it at a receiver that accepts, start: the retry delivers it, signed.
    assert "shop: stopped" in es("stop", "shop").stdout
    es("patch", "shop", "--webhook", accepting.url)
    assert js("show", "shop")["callback_parameters"]["callback_url"] == accepting.url
    assert "shop: running" in es("start", "shop").stdout
    assert "delivered and removed" in es("rejected", "retry", "shop", "evt-1").stdout
    assert js("rejected", "list", "shop")["rejected_events"] == []
    eventually_sync(lambda: accepting.deliveries() == 1, what="the retried delivery")
    assert "webhook-id: evt-1" in accepting.output()
    assert "signature: ok" in accepting.output()
    actions = [e["action"] for e in js("logs", "shop")["entries"]]
    assert {"integration_created", "event_rejected", "rejected_event_retry_failed",
            "integration_stopped", "integration_updated", "integration_started",
            "rejected_event_retried"} <= set(actions)
    assert "integration_updated" in es("logs", "shop").stdout

    # From a TOML file; a rejected event deleted.
    spec = tmp_path / "bin.toml"
    spec.write_text(f'id = "bin"\n[callback_parameters]\ncallback_url = "{refusing.url}"\n')
    es("create", "--file", str(spec))
    cli("publish", "--config", str(d.config_path), "-",
        stdin='{"id": "evt-2", "name": "order.created", "payload": {}}')
    eventually_sync(lambda: js("rejected", "list", "bin")["rejected_events"],
                    what="the second rejection")
    eventually_sync(lambda: accepting.deliveries() == 2, what="evt-2 at shop")
    assert "deleted" in es("rejected", "delete", "bin", "evt-2").stdout
    assert js("rejected", "list", "bin")["rejected_events"] == []
    es("rejected", "show", "bin", "evt-2", code=4)

    # Exit codes scripts rely on.
    assert "deleted shop" in es("delete", "shop").stdout
    missing = es("show", "shop", code=4)
    assert "integration_not_found" in missing.stderr and missing.stdout == ""
    es("create", "nowhere", code=2)  # no target
    es("patch", "bin", code=2)  # nothing to change
    assert "stop the integration" in es("patch", "bin", "--events", "a.b", code=1).stderr
    es("create", "bin", "--webhook", accepting.url, code=1)  # exists: 409
    unreachable = cli("integrations", "list", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 3 and "cannot reach the daemon" in unreachable.stderr
    no_scheme = cli("integrations", "list", "--url", "localhost:8080")
    assert no_scheme.returncode == 2 and "http://localhost:8080" in no_scheme.stderr
    wrong = cli("integrations", "list", "--config", str(d.config_path), "--token", "nope")
    assert wrong.returncode == 1 and "401" in wrong.stderr and "--token" in wrong.stderr


def test_delivery_controls_from_the_command_line(daemon_factory: Factory,
                                                 listeners: Any) -> None:
    d = daemon_factory(SIGNED)  # a global secret: the integration's own one replaces it
    own = "whsec_" + "T3duU2VjcmV0" * 3  # 27 bytes
    receiver = listeners("--secret", own)

    def es(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = cli("integrations", *args, "--config", str(d.config_path))
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result

    def params() -> Any:
        return json.loads(es("show", "ctl", "--json").stdout)["callback_parameters"]

    es("create", "ctl", "--webhook", receiver.url, "--signing-secret", own,
       "--header", "X-Tenant: acme-tenant-token", "--header", "X-Env:prod",
       "--max-rate", "50", "--ordered", "--ordering-key", "order_id",
       "--stop-after-failing", "2d")
    assert params() == {"callback_url": receiver.url, "signing_secret": "wh***",
                        "headers": {"X-Tenant": "ac***", "X-Env": "***"}, "max_rate": 50,
                        "ordered": True, "ordering_key": "order_id",
                        "stop_after_failing": "2d"}
    shown = " ".join(es("show", "ctl").stdout.split())
    assert "max_rate: 50/s" in shown and "order: per order_id" in shown
    assert "acme-tenant-token" not in shown
    # A patch of one control keeps the rest, secrets included.
    es("stop", "ctl")
    es("patch", "ctl", "--max-rate", "5", "--no-ordered", "--header", "X-Env:staging")
    changed = params()
    assert changed["max_rate"] == 5 and "ordered" not in changed
    assert changed["headers"] == {"X-Tenant": "ac***", "X-Env": "***"}
    es("patch", "ctl", "--ordering-key", "order_id", code=1)  # needs --ordered
    es("start", "ctl")
    cli("publish", "--config", str(d.config_path), "-",
        stdin='{"name": "order.created", "payload": {"order_id": "A-1"}}')
    eventually_sync(lambda: receiver.deliveries() == 1, what="a delivery")
    out = receiver.output()
    assert "signature: ok" in out and "X-Tenant: acme-tenant-token" in out
    assert "X-Env: staging" in out
    # Rotation: the new secret is printed once; deliveries verify with it.
    rotated = es("rotate-secret", "ctl").stdout.strip().splitlines()[-1]
    assert rotated.startswith("whsec_") and rotated != own
    fresh = listeners("--secret", rotated)
    es("stop", "ctl")
    es("patch", "ctl", "--webhook", fresh.url)
    es("start", "ctl")
    cli("publish", "--config", str(d.config_path), "-",
        stdin='{"name": "order.created", "payload": {"order_id": "A-2"}}')
    eventually_sync(lambda: fresh.deliveries() == 1, what="a delivery after the rotation")
    assert "signature: ok" in fresh.output()
    assert rotated not in d.log()
    es("rotate-secret", "ctl", "--signing-secret", "nope", code=1)
    es("create", "bad", "--webhook", receiver.url, "--header", "no-colon", code=2)


def test_listen_answers_the_given_status_and_checks_signatures(daemon_factory: Factory,
                                                               listeners: Any) -> None:
    d = daemon_factory(SIGNED)
    wrong = listeners("--secret", "whsec_" + "QUJD" * 8, "--status", "202")
    es = ["integrations", "create", "x", "--webhook", wrong.url, "--config", str(d.config_path)]
    assert cli(*es).returncode == 0
    cli("publish", "--config", str(d.config_path), "-",
        stdin='{"name": "order.created", "payload": {"k": "v"}}')
    eventually_sync(lambda: wrong.deliveries() == 1, what="a delivery")
    out = wrong.output()
    assert "-> 202" in out and "signature: INVALID" in out and '"k": "v"' in out
    assert wrong.stop() == 0  # SIGTERM ends it cleanly
    bad = cli("listen", "--secret", "nope")
    assert bad.returncode == 2 and "whsec_" in bad.stderr


def test_paths_resolve_against_the_config_file_from_anywhere(daemon_factory: Factory,
                                                             tmp_path: Path) -> None:
    d = daemon_factory({"storage": {"data_dir": "data"}, "auth": {"tokens": []}},
                       cwd=tmp_path)
    runtime = json.loads((d.workdir / "data" / "runtime.json").read_text())
    assert runtime["control_socket"] == str(d.workdir / "data" / "control.sock")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relative = os.path.relpath(d.config_path, elsewhere)
    listed = cli("integrations", "list", "--json", "--config", relative, cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr  # found runtime.json and the api_token
    published = cli("publish", "--config", relative, "-", cwd=elsewhere,
                    stdin='{"name": "a.b", "payload": {}}')
    assert published.returncode == 0, published.stderr
    checked = cli("check-config", relative, cwd=elsewhere)
    assert checked.returncode == 0 and str(d.workdir / "data") in checked.stdout


def test_check_config_validates_and_creates_nothing(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[storage]\ndata_dir = "never-made"\n[webhook]\n'
                    f'signing_secret = "{SECRET}"\n')
    result = cli("check-config", str(good))
    assert result.returncode == 0 and "valid" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[webhook]\nsigning_secret = "not-a-secret"\n')
    result = cli("check-config", str(bad))
    assert result.returncode == 2 and "'webhook.signing_secret'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "good.toml"]
    shipped = cli("check-config", str(Path(__file__).parents[1] / "eventstreamd.toml"))
    assert shipped.returncode == 0, shipped.stderr


def test_publish_names_the_input_line_and_says_where_it_looked(daemon: DaemonProcess,
                                                               tmp_path: Path) -> None:
    lines = [json.dumps({"name": "order.created", "payload": {"i": i}}) for i in range(1600)]
    lines[1500] = json.dumps({"name": "nodot", "payload": {}})
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines) + "\n")
    result = cli("publish", "--config", str(daemon.config_path), str(path))
    assert result.returncode == 1
    assert "line 1,501: 'name'" in result.stderr, result.stderr
    assert "1,000 events accepted before this batch" in result.stderr
    array = json.dumps([{"name": "a.b", "payload": {}}, {"name": "a.b"}])
    result = cli("publish", "--config", str(daemon.config_path), "-", stdin=array)
    assert "event 1 of the array: 'payload'" in result.stderr
    result = cli("publish", "--url", "localhost:8080", "-", stdin="{}")
    assert result.returncode == 2 and "http://localhost:8080" in result.stderr
    result = cli("publish", "--url", daemon.url, "-", stdin='{"name": "a.b", "payload": {}}',
                 cwd=tmp_path, env={"EVENTSTREAMD_CONFIG": ""})
    assert result.returncode == 1 and "401" in result.stderr
    assert "no token found; looked at --token, $EVENTSTREAMD_TOKEN" in result.stderr


def test_help() -> None:
    bare = cli()
    assert bare.returncode == 0 and "COMMAND" in bare.stdout and "integrations" in bare.stdout
    run_help = cli("run", "--help").stdout
    for words in ("$EVENTSTREAMD_CONFIG", "SIGTERM", "exit codes", "relative to the file"):
        assert words in run_help
    assert "exit codes" in cli("integrations", "--help").stdout


def test_replay_commands_count_start_follow_and_cancel(daemon_factory: Factory,
                                                       listeners: Any) -> None:
    d = daemon_factory(FAST)
    listener = listeners()

    def es(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = cli("integrations", *args, "--config", str(d.config_path))
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result

    es("create", "shop", "--webhook", f"{listener.url}hooks")
    events = "\n".join(json.dumps({"name": name, "payload": {"i": i}})
                       for i, name in enumerate(["order.created", "order.paid"] * 10))
    assert cli("publish", "--config", str(d.config_path), stdin=events).returncode == 0
    eventually_sync(lambda: listener.deliveries() >= 20)
    out = es("replay", "shop", "--from", "5m", "--dry-run").stdout
    assert "20 events would be replayed" in out
    counted = json.loads(es("replay", "shop", "--from", "5m", "--events", "order.paid",
                            "--dry-run", "--json").stdout)
    assert counted == {"events": 10}
    # Followed to the end; stderr is no terminal here: plain progress lines, no bar.
    done = es("replay", "shop", "--from", "5m", "--entities", "order", "--wait")
    assert "completed: 20 of 20 events delivered" in done.stdout
    assert "replay " in done.stderr and "20/20 events (100%) completed" in done.stderr
    assert "\r" not in done.stderr
    eventually_sync(lambda: listener.deliveries() >= 40)
    # On a terminal: a bar, redrawn in place.
    primary, secondary = pty.openpty()
    try:
        followed = subprocess.run(
            [sys.executable, "-m", "eventstreamd", "integrations", "replay", "shop", "--from",
             "5m", "--rate", "20", "--wait", "--config", str(d.config_path)],
            stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=60)
        os.close(secondary)
        drawn = b""
        while chunk := _read_pty(primary):
            drawn += chunk
    finally:
        os.close(primary)
    assert followed.returncode == 0 and "completed: 20 of 20" in followed.stdout
    assert b"\r[" in drawn and b"20/20 events (100%) completed" in drawn
    assert b"[" + b"#" * 30 + b"]" in drawn
    slow = json.loads(es("replay", "shop", "--from", "5m", "--rate", "1", "--json").stdout)
    assert slow["events"] == 20 and slow["status"] == "running"
    listed = es("replays", "shop").stdout.splitlines()
    assert listed[0].split()[:3] == ["REPLAY", "STATUS", "PROGRESS"]
    assert listed[1].split()[:2] == [slow["replay_id"], "running"]
    assert listed[2].split()[1] == "completed"
    out = es("replay-cancel", "shop", slow["replay_id"]).stdout
    assert f"replay {slow['replay_id']} cancelled after" in out
    es("replay-cancel", "shop", "nope", code=4)
    assert "starts_at" in es("replay", "shop", "--from", "soon", code=1).stderr
    es("replays", "nobody", code=4)


def _read_pty(fd: int) -> bytes:
    """What a pseudo-terminal holds; b"" once its other end is closed and it is drained."""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the writer closed it
        return b""

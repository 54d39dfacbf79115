"""The README's quick start runs as written: its shell blocks executed in order in a fresh
directory (the daemon on a free port, `listen` as the receiver), and its receiver that
verifies signatures run against a real delivery."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.api import ApiClient
from tests.helpers.daemon import Factory, Listener
from tests.helpers.readme import ROOT, blocks, json_values, section, shell_env
from tests.helpers.receiver import Receiver
from tests.helpers.wait import eventually, eventually_sync

WAIT = 20.0


def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    daemon_block, listen_block, *steps = blocks(section("Quick start"), "sh")
    # `make run` is `eventstreamd run --config eventstreamd.toml` in a venv; run that here.
    assert daemon_block.split("#")[0].strip() == "make run"
    makefile = (ROOT / "Makefile").read_text()
    assert "\t$(BIN)/eventstreamd run --config eventstreamd.toml\n" in makefile
    config = (ROOT / "eventstreamd.toml").read_text()
    assert "\nport = 8080 " in config
    (tmp_path / "eventstreamd.toml").write_text(config.replace("\nport = 8080 ", "\nport = 0 "))
    env = shell_env()
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "eventstreamd", "run", "--config",
                               "eventstreamd.toml"], cwd=tmp_path, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    listener: Listener | None = None
    try:
        runtime = tmp_path / "data" / "runtime.json"

        def started() -> bool:
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            return runtime.exists()
        eventually_sync(started, within=WAIT, what="the daemon wrote runtime.json")
        port = json.loads(runtime.read_text())["port"]

        activate, listen = [line for line in listen_block.splitlines() if line.strip()]
        assert activate == ". .venv/bin/activate"
        assert listen == "eventstreamd listen --port 9000"
        listener = Listener(tmp_path, cwd=tmp_path)
        receiver_port = listener.url.rsplit(":", 1)[1].strip("/")

        outputs = []
        for step in steps:
            script = (step.replace(". .venv/bin/activate\n", "")
                      .replace(":8080", f":{port}").replace(":9000", f":{receiver_port}"))
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                                    env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (step, result.stdout, result.stderr)
            outputs.append(result.stdout)
            # A documented answer (`# {...}` after a command) is what the command printed.
            for expected in re.findall(r"^# (\{.*\})$", step, flags=re.M):
                assert json.loads(expected) in json_values(result.stdout), \
                    (expected, result.stdout)
        assert "demo" in outputs[0] and "running" in outputs[0]
        eventually_sync(listener.deliveries, lambda n: n >= 2, within=WAIT,
                        what="both documented events reached the listener")
        received = listener.output()
        assert '"order_id": "A-1"' in received and '"order_id": "A-2"' in received
        assert "POST /hooks" in received
        # The token never went to the log; the log says where it is.
        token = (tmp_path / "data" / "api_token").read_text().strip()
        assert token not in (tmp_path / "daemon.log").read_text()
    finally:
        if listener is not None:
            listener.stop()
        daemon.send_signal(signal.SIGTERM)
        try:
            assert daemon.wait(20) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
            log.close()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


async def test_the_five_line_receiver_verifies_a_real_delivery(
        daemon_factory: Factory) -> None:
    [code] = blocks(section("Signed webhooks"), "python")
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    namespace: dict[str, Any] = {}
    exec(compile(code.replace('"whsec_..."', repr(secret)), "README.md", "exec"), namespace)
    receiver = await Receiver().start()
    try:
        d = daemon_factory({"webhook": {"signing_secret": secret}})
        async with ApiClient(d) as api:
            await api.webhook("signed", receiver.url)
            await api.publish([{"name": "order.created", "payload": {"order_id": "A-1"}}])
            await eventually(lambda: len(receiver.requests) == 1)
        body, headers = receiver.requests[0].raw, receiver.requests[0].headers
        assert namespace["verified"](body, headers)["payload"] == {"order_id": "A-1"}
        forged = {**headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
        try:
            namespace["verified"](body, forged)
        except Exception as exc:
            assert type(exc).__name__ == "WebhookVerificationError"
        else:
            raise AssertionError("a forged signature was accepted")
    finally:
        await receiver.close()

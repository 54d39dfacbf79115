"""Config loading: units, every error path (exit 2, one line naming file and key), resolution."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eventstreamd.config import Config, ConfigError, load_config, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10), ("5m", 300), ("2h", 7200), ("30d", 2_592_000), (3, 3.0),
     ("1.5s", 1.5), ("7", 7.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KiB", 512 * 1024), ("50MiB", 50 * 1024**2), ("4GiB", 4 * 1024**3), ("10MB", 10**7),
     (1234, 1234), ("100", 100)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_defaults_when_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVENTSTREAMD_CONFIG", raising=False)
    assert load_config() == Config()


def test_shipped_file_matches_defaults() -> None:
    shipped = load_config(Path(__file__).parents[1] / "eventstreamd.toml")
    # Every section and key; only where it was read from differs.
    assert dataclasses.replace(shipped, source=Config().source, base_dir="") == Config()


def test_shipped_file_lists_every_key() -> None:
    import dataclasses
    import tomllib

    with open(Path(__file__).parents[1] / "eventstreamd.toml", "rb") as fh:
        shipped = tomllib.load(fh)
    missing = []
    for fld in dataclasses.fields(Config):
        section = fld.default_factory if fld.default_factory is not dataclasses.MISSING else None
        if fld.metadata.get("internal"):
            continue
        if section is not None and dataclasses.is_dataclass(section):
            missing += [f"{fld.name}.{key.name}" for key in dataclasses.fields(section)
                        if key.name not in shipped.get(fld.name, {})]
        elif fld.name not in shipped:
            missing.append(fld.name)
    assert missing == []


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eventstreamd.toml").write_text('tenant = "from-cwd"\n')
    env_file = tmp_path / "env.toml"
    env_file.write_text('tenant = "from-env"\n')
    arg_file = tmp_path / "arg.toml"
    arg_file.write_text('tenant = "from-arg"\n')
    monkeypatch.delenv("EVENTSTREAMD_CONFIG", raising=False)
    assert load_config().tenant == "from-cwd"
    monkeypatch.setenv("EVENTSTREAMD_CONFIG", str(env_file))
    assert load_config().tenant == "from-env"
    assert load_config(arg_file).tenant == "from-arg"


def test_values_are_parsed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[webhook]\ntimeout = "250ms"\n[s3]\nrotate_size = "1MiB"\n'
                    '[auth]\ntokens = ["abcd1234"]\n')
    config = load_config(path)
    assert config.webhook.timeout == 0.25
    assert config.s3.rotate_size == 1024 * 1024
    assert config.auth.tokens == ("abcd1234",)
    with pytest.raises(AttributeError):
        config.tenant = "x"  # type: ignore[misc]  # frozen


BAD_CONFIGS = [
    ("unknown_key", "bogus = 1\n", "'bogus'"),
    ("unknown_section", "[nope]\nx = 1\n", "'nope'"),
    ("unknown_nested", "[server]\nprot = 1\n", "'server.prot'"),
    ("wrong_type_int", '[server]\nport = "80"\n', "'server.port'"),
    ("wrong_type_str", "tenant = 5\n", "'tenant'"),
    ("wrong_type_list", "[auth]\ntokens = \"abc\"\n", "'auth.tokens'"),
    ("bool_as_int", "[limits]\nmax_integrations = true\n", "'limits.max_integrations'"),
    ("bad_duration", '[webhook]\ntimeout = "10 parsecs"\n', "'webhook.timeout'"),
    ("negative_duration", "[webhook]\nretry_max = -1\n", "'webhook.retry_max'"),
    ("bad_size", '[storage]\nmap_size = "4 lightyears"\n', "'storage.map_size'"),
    ("section_not_table", "server = 1\n", "'server'"),
    ("port_range", "[server]\nport = 70000\n", "'server.port'"),
    ("base_path", '[server]\nbase_path = "api/"\n', "'server.base_path'"),
    ("in_flight_zero", "[webhook]\nmax_in_flight = 0\n", "'webhook.max_in_flight'"),
    ("connections_zero", "[server]\nmax_connections = 0\n", "'server.max_connections'"),
    ("read_budget_small", '[delivery]\nread_budget = "4KiB"\n', "'delivery.read_budget'"),
    ("header_timeout_zero", '[server]\nheader_timeout = "0s"\n', "'server.header_timeout'"),
    ("control_idle_zero", "[control]\nidle_timeout = 0\n", "'control.idle_timeout'"),
    ("log_level", '[log]\nlevel = "loud"\n', "'log.level'"),
    ("signing_no_prefix", '[webhook]\nsigning_secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"\n',
     "'webhook.signing_secret'"),
    ("signing_not_base64", '[webhook]\nsigning_secret = "whsec_not base64!"\n',
     "'webhook.signing_secret'"),
    ("signing_too_short", '[webhook]\nsigning_secret = "whsec_c2hvcnQ="\n',
     "'webhook.signing_secret'"),
    ("previous_alone", '[webhook]\nprevious_signing_secret = '
     '"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n', "'webhook.previous_signing_secret'"),
    ("metrics_public_str", '[metrics]\npublic = "yes"\n', "'metrics.public'"),
    ("backend", '[storage]\nbackend = "sqlite"\n', "'storage.backend'"),
    ("nats_url", '[jetstream]\nservers = ["127.0.0.1:4222"]\n', "'jetstream.servers'"),
    ("nats_prefix", '[jetstream]\nprefix = "a.b"\n', "'jetstream.prefix'"),
    ("nats_auth_twice", '[jetstream]\ntoken = "abcd1234"\ncredentials = "a.creds"\n',
     "'jetstream.credentials'"),
    ("nats_batch", "[jetstream]\nmax_batch = 1\n", "'jetstream.max_batch'"),
    ("nats_instance", '[jetstream]\ninstance = "a.b"\n', "'jetstream.instance'"),
    ("nats_lease_short", '[jetstream]\nlease_ttl = "500ms"\n', "'jetstream.lease_ttl'"),
    ("nats_lease_type", '[jetstream]\nlease_ttl = "ten seconds"\n', "'jetstream.lease_ttl'"),
    ("not_toml", "this is = = not toml\n", "not valid TOML"),
]


@pytest.mark.parametrize(("case", "text", "key"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_raises_naming_file_and_key(tmp_path: Path, case: str, text: str,
                                               key: str) -> None:
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and key in message and "\n" not in message


def test_relative_paths_resolve_against_the_config_files_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc" / "eventstreamd"
    etc.mkdir(parents=True)
    (etc / "eventstreamd.toml").write_text('[storage]\ndata_dir = "./data"\n'
                                           '[control]\nsocket = "../run/es.sock"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config("../etc/eventstreamd/eventstreamd.toml")
    assert config.data_dir == etc / "data"
    assert config.control_socket == tmp_path / "etc" / "run" / "es.sock"
    assert config.storage.data_dir == "./data"  # the value as written; the property resolves
    (etc / "abs.toml").write_text(f'[storage]\ndata_dir = "{tmp_path / "abs"}"\n')
    config = load_config(etc / "abs.toml")
    assert config.data_dir == tmp_path / "abs"
    assert config.control_socket == tmp_path / "abs" / "control.sock"


def test_without_a_file_paths_resolve_against_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVENTSTREAMD_CONFIG", raising=False)
    assert load_config().data_dir == tmp_path / "data"
    assert load_config().data_dir.is_absolute()


def test_signing_secrets(tmp_path: Path) -> None:
    new, old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_" + "QUJD" * 8
    path = tmp_path / "c.toml"
    path.write_text(f'[webhook]\nsigning_secret = "{new}"\nprevious_signing_secret = "{old}"\n')
    assert load_config(path).webhook.signing_secrets == (new, old)
    assert Config().webhook.signing_secrets == ()
    assert Config().metrics.public is False


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize("case", ["unknown_nested", "bad_duration", "wrong_type_int"])
def test_cli_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    text, key = next((t, k) for c, t, k in BAD_CONFIGS if c == case)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "eventstreamd", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and key in lines[0]


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "eventstreamd", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("eventstreamd ")


def test_instance_name_defaults_to_host_and_pid_as_a_subject_token(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[jetstream]\nlease_ttl = "2s"\n')
    js = load_config(path).jetstream
    assert js.lease_ttl == 2.0
    name = js.instance_name()
    assert name.endswith(f"-{os.getpid()}") and re.fullmatch(r"[A-Za-z0-9_-]+", name)
    path.write_text('[jetstream]\ninstance = "node-a_1"\n')
    assert load_config(path).jetstream.instance_name() == "node-a_1"

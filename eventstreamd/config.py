"""Typed, frozen configuration loaded once from TOML.

Decisions:
- The dataclasses below are the only declaration of what a config file may
  say: every section is a frozen dataclass, every key a field with a default.
  An unknown section or key, a wrong type or an unparsable value raises
  `ConfigError`, whose message names the file and the dotted key; the CLI
  turns it into one line on stderr and exit code 2.
- A key with a fixed set of values is typed as a `Literal` (`Backend`,
  `BlockPolicy`, `LogLevel`, `LogFormat`); loading refuses any other value
  naming the allowed ones, and the code that reads it is type-checked
  against the same set.
- Durations are stored as float seconds, sizes as int bytes. The field's
  metadata (`kind`) says which parser applies, so the TOML may use either a
  string with a unit ("250ms", "50MiB") or a plain number.
- Resolution order: --config PATH, $EVENTSTREAMD_CONFIG, ./eventstreamd.toml
  when it exists, built-in defaults.
- Relative paths in a config file (`storage.data_dir`, `control.socket`)
  resolve against that file's directory, as Prometheus does, so
  `eventstreamd tui --config /etc/x/eventstreamd.toml` works from anywhere;
  without a file they resolve against the working directory. The raw values
  stay as written (so a loaded file compares equal to the defaults); the
  `data_dir` and `control_socket` properties are the absolute paths every
  part of the program uses.
- Webhook signing secrets are Standard Webhooks secrets (`whsec_` and the
  base64 of 24-64 random bytes), checked here so a typo stops start-up
  instead of producing signatures no receiver accepts.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from .naming import valid_subject_token, valid_tenant

ENV_VAR = "EVENTSTREAMD_CONFIG"
DEFAULT_FILE = "eventstreamd.toml"

Backend = Literal["lmdb", "jetstream"]  # where the log and all state live (storage/factory.py)
BlockPolicy = Literal["none", "link-local", "private"]  # see eventstreamd/sinks/ssrf.py
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line for the user."""


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def _parse_quantity(value: object, kind: str, example: str, units: Mapping[str, float],
                    default_unit: str, integers_only: bool) -> float:
    """A non-negative number, or a string of a number and one of `units`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a {kind} such as \"{example}\", not a boolean")
    if isinstance(value, int) or (isinstance(value, float) and not integers_only):
        if value < 0:
            raise ValueError(f"a {kind} cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a {kind} such as \"{example}\", got {type(value).__name__}")
    match = _QUANTITY.match(value)
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in units):
        examples = ", ".join(f'"{u}"' for u in _EXAMPLES[kind])
        raise ValueError(f"bad {kind} {value!r} (use e.g. {examples})")
    return float(match.group(1)) * units[unit or default_unit]


_EXAMPLES = {"duration": ("250ms", "10s", "5m", "30d"), "size": ("512KiB", "50MiB", "4GiB")}


def parse_duration(value: object) -> float:
    """Seconds from `"250ms"`, `"10s"`, `"5m"`, `"2h"`, `"30d"` or a number of seconds."""
    return float(_parse_quantity(value, "duration", "10s", _DURATION_UNITS, "s", False))


def parse_size(value: object) -> int:
    """Bytes from `"512KiB"`, `"50MiB"`, `"4GiB"` or a number of bytes."""
    return int(_parse_quantity(value, "size", "50MiB", _SIZE_UNITS, "b", True))


def _duration(default: str) -> Any:
    return field(default=parse_duration(default), metadata={"kind": "duration"})


def _size(default: str) -> Any:
    return field(default=parse_size(default), metadata={"kind": "size"})


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/api/v1/org/integrations"
    # Overload protection (see eventstreamd/daemon/http_server.py): concurrent
    # connections (further capped by the open-file limit), and how long a client
    # may take to send its headers, to send its body, or to sit idle between requests.
    max_connections: int = 1024
    header_timeout: float = _duration("10s")
    body_timeout: float = _duration("30s")
    idle_timeout: float = _duration("60s")
    max_body: int = _size("10MiB")
    max_header: int = _size("8KiB")
    max_inflight_bytes: int = _size("32MiB")


@dataclass(frozen=True)
class AuthConfig:
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class StorageConfig:
    backend: Backend = "lmdb"  # "lmdb" (embedded, the default) or "jetstream" ([jetstream])
    data_dir: str = "./data"
    map_size: int = _size("4GiB")
    retention: float = _duration("30d")
    retention_check: float = _duration("1m")


@dataclass(frozen=True)
class JetStreamConfig:
    """The NATS JetStream backend (eventstreamd/storage/jetstream/), used when
    `storage.backend = "jetstream"`."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    token: str = ""  # an auth token; a secret: never logged
    credentials: str = ""  # a NATS .creds file (JWT + NKey seed), instead of a token
    prefix: str = "esd"  # names the streams ({prefix}_events, {prefix}_state) and subjects
    replicas: int = 1  # 1, or 3 on a cluster
    connect_timeout: float = _duration("5s")
    request_timeout: float = _duration("5s")
    max_batch: int = 1000  # events per atomic batch: the server's jetstream.limits.batch.max_msgs
    max_bytes: int = _size("0")  # a cap on the event stream (0: none); beyond it publish gets 507
    # Several daemons on one JetStream (storage/jetstream/lease.py, daemon/ownership.py):
    instance: str = ""  # this daemon's name among them; "" = "<hostname>-<pid>"
    lease_ttl: float = _duration("10s")  # an owner that has not renewed for this long loses
    # its integrations to the others (renewed every lease_ttl / 3)

    def instance_name(self) -> str:
        """The configured instance name, or `<hostname>-<pid>` made a subject token."""
        if self.instance:
            return self.instance
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48] or "host"
        return f"{host}-{os.getpid()}"


@dataclass(frozen=True)
class ControlConfig:
    socket: str = ""
    idle_timeout: float = _duration("60s")  # no request in flight and not subscribed


@dataclass(frozen=True)
class LimitsConfig:
    max_integrations: int = 10
    rejected_events: int = 30
    log_entries: int = 50
    restart_window: float = _duration("30d")


@dataclass(frozen=True)
class WebhookConfig:
    timeout: float = _duration("10s")
    max_in_flight: int = 8
    retry_initial: float = _duration("1s")
    retry_max: float = _duration("60s")
    temporary_delete_after: float = _duration("1h")
    # Standard Webhooks signing (eventstreamd/sinks/signing.py): "" means unsigned.
    # During a rotation both are set and every delivery carries both signatures.
    signing_secret: str = ""
    previous_signing_secret: str = ""
    # After POST .../_rotate_secret, the previous secret signs too for this long.
    rotation_overlap: float = _duration("24h")
    # An integration whose every delivery attempt failed (no 2xx, no 400) for this long
    # is stopped (its cursor kept); 0 = never. `stop_after_failing` of an integration's
    # callback_parameters overrides it.
    stop_after_failing: float = _duration("5d")

    @property
    def signing_secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.signing_secret, self.previous_signing_secret) if s)


@dataclass(frozen=True)
class DeliveryConfig:
    cursor_every: int = 1000
    cursor_interval: float = _duration("200ms")
    # The newest events kept in memory for every sink to share (sinks/feed.py), and the
    # bytes that reads of sinks behind them may hold at once, whatever their number.
    tail_cache: int = _size("32MiB")
    read_budget: int = _size("64MiB")
    max_replays: int = 3  # replays per integration running (or paused) at once


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str = ""
    rotate_interval: float = _duration("5m")
    rotate_size: int = _size("50MiB")
    multipart_threshold: int = _size("64MiB")  # larger files go up as multipart uploads
    timeout: float = _duration("30s")
    retry_initial: float = _duration("1s")
    retry_max: float = _duration("60s")


@dataclass(frozen=True)
class SecurityConfig:
    block_targets: BlockPolicy = "link-local"


@dataclass(frozen=True)
class MetricsConfig:
    public: bool = False  # true: GET /metrics answers without a token


@dataclass(frozen=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "text"


@dataclass(frozen=True)
class Config:
    tenant: str = "default"
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    jetstream: JetStreamConfig = field(default_factory=JetStreamConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    s3: S3Config = field(default_factory=S3Config)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})
    # The directory relative paths resolve against: the config file's ("" = the cwd).
    base_dir: str = field(default="", metadata={"internal": True})

    def path(self, value: str) -> Path:
        """A path from the config, absolute: relative ones are taken from `base_dir`."""
        return Path(os.path.normpath((Path(self.base_dir) / value).absolute()))

    @property
    def data_dir(self) -> Path:
        return self.path(self.storage.data_dir)

    @property
    def control_socket(self) -> Path:
        return (self.path(self.control.socket) if self.control.socket
                else self.data_dir / "control.sock")


_NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
_JS_PREFIX_MAX = 32  # both name subject tokens (naming.valid_subject_token)
_JS_INSTANCE_MAX = 64


def _convert(key: str, fld: dataclasses.Field[Any], expected: object, value: object) -> object:
    kind = fld.metadata.get("kind")
    if kind == "duration":
        return parse_duration(value)
    if kind == "size":
        return parse_size(value)
    if typing.get_origin(expected) is Literal:
        allowed = typing.get_args(expected)
        if value not in allowed:
            raise ValueError(f"use one of {', '.join(map(str, allowed))}")
        return value
    if expected is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type(value).__name__}")
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {type(value).__name__}")
        return value
    if expected == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return tuple(value)
    raise AssertionError(f"config field {key} has an unsupported type {expected!r}")


def _build(cls: type[Any], data: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    types = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        fld = fields.get(name)
        if fld is None:
            raise ConfigError(f"unknown key {key!r}")
        sub = types[name]
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"{key!r} must be a table ([{key}])")
            kwargs[name] = _build(sub, value, f"{key}.")
            continue
        try:
            kwargs[name] = _convert(key, fld, types[name], value)
        except ValueError as exc:
            raise ConfigError(f"bad value for {key!r}: {exc}") from None
    return cls(**kwargs)


def _check(config: Config) -> None:
    """Cross-field rules that a type alone cannot express."""
    if not config.server.base_path.startswith("/") or config.server.base_path.endswith("/"):
        raise ConfigError("bad value for 'server.base_path': must start and not end with '/'")
    if config.server.max_connections < 1:
        raise ConfigError("bad value for 'server.max_connections': must be at least 1")
    for key, value in (("server.header_timeout", config.server.header_timeout),
                       ("server.body_timeout", config.server.body_timeout),
                       ("server.idle_timeout", config.server.idle_timeout),
                       ("control.idle_timeout", config.control.idle_timeout)):
        if value <= 0:
            raise ConfigError(f"bad value for {key!r}: must be more than 0")
    if config.server.port > 65535:
        raise ConfigError("bad value for 'server.port': must be at most 65535")
    if config.server.max_inflight_bytes < config.server.max_body:
        raise ConfigError("bad value for 'server.max_inflight_bytes': must be at least "
                          "server.max_body")
    if config.delivery.cursor_every < 1:
        raise ConfigError("bad value for 'delivery.cursor_every': must be at least 1")
    if config.delivery.max_replays < 0:
        raise ConfigError("bad value for 'delivery.max_replays': must be 0 or more")
    if config.delivery.read_budget < 64 * 1024:
        raise ConfigError("bad value for 'delivery.read_budget': must be at least 64KiB")
    if config.webhook.max_in_flight < 1:
        raise ConfigError("bad value for 'webhook.max_in_flight': must be at least 1")
    for section in ("webhook", "s3"):
        retry = getattr(config, section)
        if retry.retry_max < retry.retry_initial:
            raise ConfigError(f"bad value for '{section}.retry_max': must not be below "
                              "retry_initial")
    if config.storage.map_size < 1024 * 1024:
        raise ConfigError("bad value for 'storage.map_size': must be at least 1MiB")
    if not valid_tenant(config.tenant):
        raise ConfigError("bad value for 'tenant': must be 1-128 letters, digits, '.', '_' or "
                          "'-' (and not '.' or '..')")
    if any(not t for t in config.auth.tokens):
        raise ConfigError("bad value for 'auth.tokens': tokens must not be empty strings")
    for key in ("signing_secret", "previous_signing_secret"):
        secret = getattr(config.webhook, key)
        if secret and not valid_signing_secret(secret):
            raise ConfigError(f"bad value for 'webhook.{key}': must be \"whsec_\" followed by "
                              "the base64 of 24 to 64 random bytes (see eventstreamd.toml)")
    if config.webhook.previous_signing_secret and not config.webhook.signing_secret:
        raise ConfigError("bad value for 'webhook.previous_signing_secret': set "
                          "webhook.signing_secret too (the new secret of the rotation)")
    _check_jetstream(config)


def _check_jetstream(config: Config) -> None:
    js = config.jetstream
    if not js.servers or not all(s.startswith(_NATS_SCHEMES) for s in js.servers):
        raise ConfigError("bad value for 'jetstream.servers': a list of URLs such as "
                          '"nats://127.0.0.1:4222" (nats://, tls://, ws:// or wss://)')
    if not valid_subject_token(js.prefix, _JS_PREFIX_MAX):
        raise ConfigError("bad value for 'jetstream.prefix': 1-32 letters, digits, '_' or '-'")
    if not 1 <= js.replicas <= 5:
        raise ConfigError("bad value for 'jetstream.replicas': 1 to 5")
    for key in ("connect_timeout", "request_timeout"):
        if getattr(js, key) <= 0:
            raise ConfigError(f"bad value for 'jetstream.{key}': must be more than 0")
    if js.instance and not valid_subject_token(js.instance, _JS_INSTANCE_MAX):
        raise ConfigError("bad value for 'jetstream.instance': 1-64 letters, digits, '_' or '-'")
    if js.lease_ttl < 1:
        raise ConfigError("bad value for 'jetstream.lease_ttl': at least 1s")
    if js.max_batch < 2:
        raise ConfigError("bad value for 'jetstream.max_batch': at least 2")
    if js.token and js.credentials:
        raise ConfigError("bad value for 'jetstream.credentials': give a token or a credentials "
                          "file, not both")


SIGNING_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_` + base64); ValueError if bad."""
    if not secret.startswith(SIGNING_PREFIX):
        raise ValueError("no whsec_ prefix")
    try:
        key = base64.b64decode(secret[len(SIGNING_PREFIX):], validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("the key must be 24 to 64 bytes")
    return key


def valid_signing_secret(secret: str) -> bool:
    try:
        signing_key(secret)
    except ValueError:
        return False
    return True


MAX_FILE = 1024 * 1024  # a config file, or an integration's body file: far above either


def read_capped(source: BinaryIO, limit: int = MAX_FILE) -> bytes:
    """At most `limit` bytes of `source`; ValueError when it holds more (a device such as
    /dev/zero, a wrong file), without reading the rest."""
    data = source.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 1024:,} KiB; not a file this takes")
    return data


def parse_toml(raw: bytes) -> dict[str, Any]:
    """A TOML document; ValueError saying why not (not UTF-8, not TOML, nested too deep)."""
    try:
        return tomllib.loads(raw.decode())
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ValueError("not valid TOML: nested too deeply") from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config following the resolution order; raise ConfigError on any problem."""
    chosen: Path | None = None
    if path is not None:
        chosen = Path(path)
    elif os.environ.get(ENV_VAR):
        chosen = Path(os.environ[ENV_VAR])
    elif Path(DEFAULT_FILE).is_file():
        chosen = Path(DEFAULT_FILE)
    if chosen is None:
        return Config()
    try:
        with chosen.open("rb") as fh:
            data = parse_toml(read_capped(fh))
    except FileNotFoundError:
        raise ConfigError(f"{chosen}: no such config file") from None
    except ValueError as exc:
        raise ConfigError(f"{chosen}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc.strerror}") from None
    try:
        config: Config = _build(Config, data, "")
        _check(config)
    except ConfigError as exc:
        raise ConfigError(f"{chosen}: {exc}") from None
    return dataclasses.replace(config, source=str(chosen),
                               base_dir=str(chosen.absolute().parent))

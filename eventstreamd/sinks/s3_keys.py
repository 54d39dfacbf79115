"""S3 object keys from a template (`s3_parameters.key_template`).

Decisions:
- Placeholders are `{name}` (no format specs): `{key_prefix}`, `{tenant}`,
  `{timestamp}` (epoch ms), `{random}` (32 hex digits), `{date}`
  (`YYYY-MM-DD`) and `{hour}` (`HH`), and `{first_seq}` / `{last_seq}` (the
  file's sequence range). Times are the file's creation time in UTC, so a file
  lands in the partition of its first event's hour however late it is sealed.
- The default is the object name the daemon has always written,
  `{key_prefix}/{tenant}/{timestamp}-data-{random}.export`; an empty
  `{key_prefix}` takes its `/` with it (`{tenant}/...`), as before.
- A key must be unique per file, or a file would overwrite another: a
  template must hold `{random}` or `{first_seq}` (a file's first sequence
  number is in no other file of the integration). `{first_seq}` makes keys
  deterministic, as Kafka Connect's offsets do.
- Keys are decided when a file is sealed (`{last_seq}` is known only then)
  and recorded before the upload; a rebuilt file goes up under the recorded
  key, never a newly rendered one.
- A replay writes objects of its own: its template is the integration's with
  one more segment, `replay-<replay id>`, before the last one (`within`), so
  the default names `{key_prefix}/{tenant}/replay-<id>/{timestamp}-data-{random}.export`.
- Literal text may hold only what S3 documents as safe in a key (letters,
  digits, `!-_.*'()`) plus `/` between segments and `=` (Hive-style
  partitions such as `date={date}`); no empty segment, no `.` or `..`
  segment, at most `MAX_TEMPLATE` characters. A refusal names what is wrong.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

DEFAULT_TEMPLATE = "{key_prefix}/{tenant}/{timestamp}-data-{random}.export"
PLACEHOLDERS = ("key_prefix", "tenant", "timestamp", "random", "date", "hour", "first_seq",
                "last_seq")
UNIQUE = ("random", "first_seq")  # a template needs one of these
MAX_TEMPLATE = 256
_LITERAL = re.compile(r"[A-Za-z0-9!\-_.*'()/=]*")
_TOKEN = re.compile(r"\{([^{}]*)\}")


class TemplateRefused(ValueError):
    """A key template that cannot name unique, valid keys; the message says why."""


@dataclass(frozen=True, slots=True)
class FileNaming:
    """What a key is made of for one file: known in full when the file is sealed."""

    key_prefix: str | None
    tenant: str
    opened_at: float  # wall clock seconds
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    text: str
    parts: tuple[tuple[bool, str], ...]  # (is_placeholder, literal text or name)

    @classmethod
    def parse(cls, text: str) -> KeyTemplate:
        """The template, checked; TemplateRefused names the problem."""
        if len(text) > MAX_TEMPLATE:
            raise TemplateRefused(f"is longer than {MAX_TEMPLATE} characters")
        parts: list[tuple[bool, str]] = []
        position = 0
        for match in _TOKEN.finditer(text):
            parts.append((False, text[position:match.start()]))
            name = match.group(1)
            if name not in PLACEHOLDERS:
                raise TemplateRefused(
                    f"has an unknown placeholder '{{{name}}}' (known: "
                    + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS) + ")")
            parts.append((True, name))
            position = match.end()
        parts.append((False, text[position:]))
        for is_name, literal in parts:
            if is_name:
                continue
            if "{" in literal or "}" in literal:
                raise TemplateRefused("has a '{' or '}' that opens or closes no placeholder")
            bad = _LITERAL.sub("", literal)
            if bad:
                raise TemplateRefused(
                    f"holds {bad[0]!r}, which an S3 key should not hold: use letters, digits, "
                    "the characters !-_.*'()= and '/' between segments")
        names = {name for is_name, name in parts if is_name}
        if not names & set(UNIQUE):
            raise TemplateRefused("must hold {random} or {first_seq}, or files would "
                                  "overwrite each other")
        # Segments, each placeholder standing for some text (an empty key prefix is
        # dropped with its '/' when a key is rendered).
        segments = "".join("x" if is_name else text for is_name, text in parts).split("/")
        if any(seg in (".", "..") for seg in segments):
            raise TemplateRefused("has a '.' or '..' segment")
        if "" in segments:
            raise TemplateRefused("has an empty segment (a leading, trailing or doubled '/')")
        return cls(text, tuple(parts))

    def within(self, segment: str) -> KeyTemplate:
        """This template with `segment` (literal) as one more folder before its last
        segment: a replay's objects beside, never among, the integration's own."""
        head, slash, tail = self.text.rpartition("/")
        return KeyTemplate.parse(f"{head}/{segment}/{tail}" if slash else f"{segment}/{tail}")

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for is_name, name in self.parts if is_name)

    def render(self, naming: FileNaming, suffix: str = "") -> str:
        """The key for a file; `suffix` (`.gz`, `.parquet`) is added unless the template
        already ends with it."""
        opened = datetime.fromtimestamp(naming.opened_at, UTC)
        values = {
            "key_prefix": naming.key_prefix or "",
            "tenant": naming.tenant,
            "timestamp": str(int(naming.opened_at * 1000)),
            "random": uuid.uuid4().hex if "random" in self.names else "",
            "date": opened.strftime("%Y-%m-%d"),
            "hour": opened.strftime("%H"),
            "first_seq": str(naming.first_seq),
            "last_seq": str(naming.last_seq),
        }
        key = "".join(values[text] if is_name else text for is_name, text in self.parts)
        if not naming.key_prefix:
            key = "/".join(segment for segment in key.split("/") if segment)
        if suffix and not key.endswith(suffix):
            key += suffix
        return key


DEFAULT = KeyTemplate.parse(DEFAULT_TEMPLATE)

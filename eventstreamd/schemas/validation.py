"""Validators built from the shipped OpenAPI spec, not from hand-copied schemas.

Decisions:
- The spec (`eventstream.openapi.yaml`, package data) is loaded once and
  registered as one `referencing` resource, so a `$ref` anywhere in it resolves
  against the whole document. A validator's root schema is a `$ref` into that
  resource (a JSON pointer to the operation's requestBody or response schema),
  which keeps `#/components/...` references working from any subschema.
- OpenAPI 3.0 schema objects are (an extended subset of) JSON Schema Draft 4,
  so the Draft 4 validator is the base. Two keywords are adjusted so we accept
  exactly what the spec's other readers (clients, schemathesis) accept:
  * `format` uses a checker that really checks `uri` (rfc3986-validator) and
    `date-time` (rfc3339-validator); import fails loudly if either is missing,
    rather than silently accepting anything.
  * `pattern` follows ECMA-262, the dialect OpenAPI names: Python's `$` also
    matches before a trailing newline, so `^[a-z0-9-]+$` would let
    "erp-1\\n" through; unescaped `$` outside a character class becomes `\\Z`.
- `rfc3987_syntax`, which jsonschema's format extra pulls in for the `iri`
  formats, compiles an Earley grammar at import: ~1.4 s of every daemon
  start on a small host, for formats the spec never uses. It is hidden for
  the duration of jsonschema's first import only (then `import rfc3987_syntax`
  works again for anyone who wants it); `uri` and `date-time` come from
  rfc3986-validator and rfc3339-validator and are asserted present below.
- Messages name the offending field as a dotted path (`callback_parameters.
  callback_url`) and never echo the submitted value: a value may be a secret
  (`api_key`), and the client already has it.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .spec import spec


def _import_jsonschema_quickly() -> None:
    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules:
        return
    # None in sys.modules makes that import raise ImportError (the documented way to
    # block one), which sys.modules' type does not allow for.
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]
    try:
        import jsonschema  # noqa: F401
    finally:
        del sys.modules["rfc3987_syntax"]


_import_jsonschema_quickly()

from jsonschema import Draft4Validator, FormatChecker, validators  # noqa: E402
from jsonschema.exceptions import ValidationError, best_match  # noqa: E402
from jsonschema.protocols import Validator  # noqa: E402
from referencing import Registry  # noqa: E402
from referencing.jsonschema import DRAFT4  # noqa: E402

SPEC_URI = "urn:eventstreamd:openapi"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

FORMAT_CHECKER: FormatChecker = Draft4Validator.FORMAT_CHECKER
_missing = {"uri", "date-time"} - set(FORMAT_CHECKER.checkers)
if _missing:  # pragma: no cover - a broken install, not a runtime condition
    raise ImportError(
        f"jsonschema cannot check the formats {sorted(_missing)}: install jsonschema[format-nongpl]"
    )


class RequestInvalid(ValueError):
    """A request body that fails the operation's schema; `str()` names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# ------------------------------------------------------------------------ spec


@functools.cache
def _operations() -> dict[str, tuple[str, str]]:
    """operationId -> (path, method)."""
    found: dict[str, tuple[str, str]] = {}
    for path, item in spec()["paths"].items():
        for method in _METHODS:
            operation = item.get(method)
            if isinstance(operation, dict) and "operationId" in operation:
                found[operation["operationId"]] = (path, method)
    return found


def operation(operation_id: str) -> dict[str, Any]:
    path, method = _locate(operation_id)
    found: dict[str, Any] = spec()["paths"][path][method]
    return found


def _locate(operation_id: str) -> tuple[str, str]:
    try:
        return _operations()[operation_id]
    except KeyError:
        raise KeyError(f"the spec has no operation {operation_id!r}") from None


def _escape(token: str) -> str:
    """One JSON pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(*tokens: str) -> str:
    return "#/" + "/".join(_escape(t) for t in tokens)


# ------------------------------------------------------------- the validators


@functools.cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile an ECMA-262 pattern for Python: `$` means the end of the input only."""
    out: list[str] = []
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            out.append(r"\Z")
            continue
        out.append(char)
    return re.compile("".join(out))


def _pattern(
    validator: Validator, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"does not match {pattern!r}")


# jsonschema's `extend`, as typed as its documentation (its stub leaves it unannotated).
_extend: Callable[[type[Validator], dict[str, Any]], type[Validator]] = validators.extend
_OpenApi30Validator = _extend(Draft4Validator, {"pattern": _pattern})


@functools.cache
def _registry() -> Registry[Any]:
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, DRAFT4.create_resource(spec()))
    return registry


def _validator_for(pointer: str) -> Validator:
    validator: Validator = _OpenApi30Validator(
        {"$ref": SPEC_URI + pointer}, registry=_registry(), format_checker=FORMAT_CHECKER
    )
    return validator


def _json_content(container: dict[str, Any], what: str) -> dict[str, Any]:
    content = container.get("content") or {}
    media = content.get("application/json")
    if not isinstance(media, dict) or "schema" not in media:
        raise KeyError(f"{what} has no application/json schema")
    return media


def request_schema(operation_id: str) -> dict[str, Any]:
    body = operation(operation_id).get("requestBody")
    if not isinstance(body, dict):
        raise KeyError(f"{operation_id} takes no request body")
    schema: dict[str, Any] = _json_content(body, f"{operation_id}'s request body")["schema"]
    return schema


@functools.cache
def request_validator(operation_id: str) -> Validator:
    request_schema(operation_id)  # fail early, with a clear message, on a wrong id
    path, method = _locate(operation_id)
    return _validator_for(
        _pointer("paths", path, method, "requestBody", "content", "application/json", "schema")
    )


def warm() -> None:
    """Load the spec and build every request body's validator now, not on the first
    request that needs one (the YAML alone takes ~0.1 s; the daemon calls this in a worker
    thread once it has started)."""
    for operation_id in _operations():
        try:
            request_validator(operation_id).is_valid({})  # resolves its references too
        except KeyError:
            continue  # no request body


def response_schema(operation_id: str, status: int) -> dict[str, Any] | None:
    """The documented JSON schema of a response, or None when it has no body."""
    response = operation(operation_id)["responses"].get(str(status))
    if response is None:
        raise KeyError(f"{operation_id} does not document status {status}")
    if not response.get("content"):
        return None
    schema: dict[str, Any] = _json_content(response, f"{operation_id}'s {status}")["schema"]
    return schema


@functools.cache
def response_validator(operation_id: str, status: int) -> Validator | None:
    """A validator for a documented response body (None when the spec documents no body)."""
    if response_schema(operation_id, status) is None:
        return None
    path, method = _locate(operation_id)
    return _validator_for(_pointer(
        "paths", path, method, "responses", str(status), "content", "application/json", "schema"
    ))


def documented_statuses(operation_id: str) -> set[int]:
    return {int(code) for code in operation(operation_id)["responses"] if code.isdigit()}


# -------------------------------------------------------------------- checking


MAX_DEPTH = 32  # the spec's request bodies nest 3 levels deep


def exceeds_depth(value: Any, limit: int) -> bool:
    """True when `value` nests objects or arrays more than `limit` levels deep (iterative:
    a deep body must not exhaust the recursion that jsonschema would use on it)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def validate_request(operation_id: str, body: Any) -> None:
    """Raise `RequestInvalid` (naming the field) when `body` fails the operation's schema."""
    if exceeds_depth(body, MAX_DEPTH):
        raise RequestInvalid("", f"the request body nests more than {MAX_DEPTH} levels deep")
    error = best_match(request_validator(operation_id).iter_errors(body))
    if error is not None:
        field, message = describe(_deepest(error))
        raise RequestInvalid(field, message)


def _deepest(error: ValidationError) -> ValidationError:
    """Descend through failed `oneOf`/`anyOf` into the alternative that got furthest.

    `best_match` stops at "does not match any of the allowed forms" when the
    alternatives fail at different depths; the deepest failure is the one that
    names the field the client actually got wrong.
    """
    while error.validator in ("oneOf", "anyOf") and error.context:
        depth = max(len(e.absolute_path) for e in error.context)
        if depth == len(error.absolute_path):
            break  # every alternative fails right here: `describe` lists them
        candidate = best_match(e for e in error.context if len(e.absolute_path) == depth)
        if candidate is None:
            break
        error = candidate
    return error


def response_errors(operation_id: str, status: int, body: Any) -> list[str]:
    """Every way `body` fails the documented response schema (empty when it conforms)."""
    validator = response_validator(operation_id, status)
    if validator is None:
        return [] if body in (None, b"", "") else ["the spec documents no body for this response"]
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]


def _alternatives_required(error: ValidationError) -> list[str]:
    """The properties each alternative requires, when missing them is why all failed."""
    names: list[str] = []
    instance = error.instance if isinstance(error.instance, dict) else {}
    for sub in error.context or ():
        required = sub.validator_value
        if (sub.validator != "required" or sub.absolute_path != error.absolute_path
                or not isinstance(required, list)):
            continue
        names += [n for n in required if n not in instance and n not in names]
    return names


_FORMAT_NAMES = {"uri": "absolute URI", "date-time": "RFC 3339 date-time"}
_TYPE_ARTICLES = {"object": "an object", "array": "an array", "integer": "an integer"}


def describe(error: ValidationError) -> tuple[str, str]:
    """(field, message) for a validation error, without echoing the submitted value."""
    path = [str(p) for p in error.absolute_path]
    keyword = error.validator
    expected: Any = error.validator_value  # the keyword's value in the schema: any JSON
    instance = error.instance
    if keyword == "required" and isinstance(instance, dict):
        missing = next((p for p in expected if p not in instance), expected[0])
        field = ".".join([*path, missing])
        return field, f"'{field}' is required"
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = sorted(k for k in instance if k not in allowed)
        field = ".".join([*path, extra[0]]) if extra else ".".join(path)
        return field, f"'{field}' is not allowed here"
    field = ".".join(path)
    subject = f"'{field}'" if field else "the request body"
    if keyword == "type":
        return field, f"{subject} must be {_TYPE_ARTICLES.get(expected, f'a {expected}')}"
    if keyword == "format":
        return field, f"{subject} must be a valid {_FORMAT_NAMES.get(expected, expected)}"
    if keyword == "pattern":
        return field, f"{subject} must match the pattern {expected}"
    if keyword == "minLength":
        return field, f"{subject} must be at least {expected} character(s) long"
    if keyword == "maxLength":
        return field, f"{subject} must be at most {expected} characters long"
    if keyword == "minimum":
        exclusive = isinstance(error.schema, dict) and error.schema.get("exclusiveMinimum")
        return field, f"{subject} must be {'more than' if exclusive else 'at least'} {expected}"
    if keyword == "maximum":
        return field, f"{subject} must be at most {expected}"
    if keyword == "maxProperties":
        return field, f"{subject} may hold at most {expected} entries"
    if keyword == "enum":
        return field, f"{subject} must be one of: {', '.join(map(str, expected))}"
    if keyword in ("oneOf", "anyOf"):
        required = _alternatives_required(error)
        if required:
            names = [".".join([*path, name]) for name in required]
            return field, "one of " + " or ".join(f"'{n}'" for n in names) + " is required"
        return field, f"{subject} does not match any of the allowed forms"
    if keyword == "not":
        return field, f"{subject} contains a combination of fields that is not allowed"
    return field, f"{subject} is invalid ({keyword})"

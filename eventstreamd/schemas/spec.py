"""The served OpenAPI document: the seed's spec, untouched, plus this project's extensions.

Decisions:
- `eventstream.openapi.yaml` stays byte for byte the seed's spec (tests run
  schemathesis against it as it is). Everything this daemon adds lives in
  `extensions/*.yaml`, one file per feature, each a partial OpenAPI document,
  and is merged in at load time; the merged document is what `GET
  /openapi.yaml` serves and what requests are validated against.
- An extension file may hold `paths` (new operations, or new methods of a
  seed path), `components` (new schemas, parameters, ...) and
  `x-eventstreamd-target-properties`: extra properties for the target
  objects (`callback_parameters: {name: schema}`, `s3_parameters: ...`). The
  seed spells each target object out inline in several places (request and
  response bodies); the loader adds the properties to every one of them, so
  no copy can be forgotten.
- Everything merged in is marked `x-eventstreamd-extension: true` (added here
  when the file does not say it), so a reader of the served spec can tell
  the seed's contract from ours.
- The target objects of request bodies are closed (`additionalProperties:
  false`) in the served document: with optional fields defined, a misspelt one (`max_rte`) must be
  a 400 naming it, not silently ignored. The seed's own document leaves them
  open, as it did.
- A name an extension defines twice, or that the seed already has, is a
  packaging error and fails loudly at load, not at request time.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml

SPEC_FILE = "eventstream.openapi.yaml"
EXTENSIONS_DIR = "extensions"
MARK = "x-eventstreamd-extension"
TARGET_PROPERTIES = "x-eventstreamd-target-properties"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class SpecError(RuntimeError):
    """The packaged spec or one of its extensions cannot be merged."""


def _package() -> Traversable:
    return resources.files("eventstreamd.schemas")


def seed_spec_text() -> str:
    """The seed's spec exactly as shipped."""
    return _package().joinpath(SPEC_FILE).read_text()


def _load(text: str, what: str) -> dict[str, Any]:
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise SpecError(f"{what} is not a YAML mapping")
    return loaded


@functools.cache
def seed_spec() -> dict[str, Any]:
    loaded = _load(seed_spec_text(), SPEC_FILE)
    if "paths" not in loaded:
        raise SpecError(f"{SPEC_FILE} is not an OpenAPI document")
    return loaded


def extension_files() -> list[Traversable]:
    folder = _package().joinpath(EXTENSIONS_DIR)
    if not folder.is_dir():
        return []
    return sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")),
                  key=lambda f: f.name)


@functools.cache
def spec() -> dict[str, Any]:
    """The seed's spec with every extension merged in (see the module docstring)."""
    merged = copy.deepcopy(seed_spec())
    targets: dict[str, dict[str, Any]] = {}
    for file in extension_files():
        extension = _load(file.read_text(), f"{EXTENSIONS_DIR}/{file.name}")
        _merge_paths(merged, extension.get("paths") or {}, file.name)
        _merge_components(merged, extension.get("components") or {}, file.name)
        for api_field, properties in (extension.get(TARGET_PROPERTIES) or {}).items():
            into = targets.setdefault(api_field, {})
            for name, schema in properties.items():
                if name in into:
                    raise SpecError(f"{file.name}: '{api_field}.{name}' is defined twice")
                into[name] = _marked(schema)
    _extend_targets(merged, targets)
    return merged


@functools.cache
def spec_text() -> str:
    """The served document (`GET /openapi.yaml`)."""
    return yaml.safe_dump(spec(), sort_keys=False, allow_unicode=True, width=100)


def _marked(node: Any) -> Any:
    if isinstance(node, dict) and MARK not in node:
        return {**node, MARK: True}
    return node


def _merge_paths(into: dict[str, Any], paths: dict[str, Any], source: str) -> None:
    for path, item in paths.items():
        existing = into["paths"].setdefault(path, {})
        for key, value in item.items():
            if key in existing:
                raise SpecError(f"{source}: '{key} {path}' exists already")
            existing[key] = _marked(value) if key in _METHODS else value


def _merge_components(into: dict[str, Any], components: dict[str, Any], source: str) -> None:
    target = into.setdefault("components", {})
    for section, entries in components.items():
        existing = target.setdefault(section, {})
        for name, value in entries.items():
            if name in existing:
                raise SpecError(f"{source}: 'components.{section}.{name}' exists already")
            existing[name] = _marked(value)


def _target_objects(node: Any, api_field: str) -> Iterator[dict[str, Any]]:
    """Every schema object the document gives for the target field `api_field`, once each
    (YAML aliases may share one object between places)."""
    stack, seen, yielded = [node], set(), set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, dict):
            properties = current.get("properties")
            if isinstance(properties, dict):
                schema = properties.get(api_field)
                if (isinstance(schema, dict) and isinstance(schema.get("properties"), dict)
                        and id(schema) not in yielded):
                    yielded.add(id(schema))
                    yield schema
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)


def _request_bodies(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in document["paths"].values():
        for method in _METHODS:
            body = item.get(method, {}).get("requestBody") if isinstance(item, dict) else None
            if isinstance(body, dict):
                yield body


def _extend_targets(document: dict[str, Any], targets: dict[str, dict[str, Any]]) -> None:
    """Add the extension properties to every target object; close those in request bodies
    (responses stay open: the seed's response schemas leave out fields it does return,
    such as the masked `api_key`)."""
    for api_field in dict.fromkeys(("callback_parameters", "s3_parameters", *targets)):
        found = False
        for schema in _target_objects(document, api_field):
            found = True
            for name, property_schema in targets.get(api_field, {}).items():
                if name in schema["properties"]:
                    raise SpecError(f"'{api_field}.{name}' is the seed's own field")
                schema["properties"][name] = copy.deepcopy(property_schema)
        if not found and api_field in targets:
            raise SpecError(f"the spec has no target object '{api_field}'")
        for body in _request_bodies(document):
            for schema in _target_objects(body, api_field):
                schema["additionalProperties"] = False

"""The served spec is the seed's plus marked extensions; target objects are closed."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstreamd.schemas import spec as spec_module
from eventstreamd.schemas.spec import MARK, SpecError, seed_spec
from tests.helpers.api import BASE, ApiClient
from tests.helpers.daemon import Factory

METHODS = ("get", "put", "post", "delete", "patch")


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for item in document["paths"].values()
            for method, op in item.items() if method in METHODS}


@pytest.fixture
def extensions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Extension files from a temp dir instead of the package's."""
    folder = tmp_path / "extensions"
    folder.mkdir()
    monkeypatch.setattr(spec_module, "extension_files",
                        lambda: sorted(folder.glob("*.yaml"), key=lambda p: p.name))
    spec_module.spec.cache_clear()
    spec_module.spec_text.cache_clear()
    yield folder
    spec_module.spec.cache_clear()
    spec_module.spec_text.cache_clear()


def test_the_seed_operations_keep_their_shapes() -> None:
    seed = _operations(seed_spec())
    served = _operations(spec_module.spec())
    assert len(seed) == 12
    for operation_id in seed:
        assert operation_id in served
        assert MARK not in served[operation_id]
    extra = set(served) - set(seed)
    assert all(served[op].get(MARK) is True for op in extra), extra


def test_target_objects_of_requests_are_closed() -> None:
    bodies = list(spec_module._request_bodies(spec_module.spec()))
    closed = [schema for body in bodies
              for schema in spec_module._target_objects(body, "callback_parameters")]
    assert len(closed) >= 2  # create and update each spell the object out
    assert all(schema["additionalProperties"] is False for schema in closed)
    open_in_seed = list(spec_module._target_objects(copy.deepcopy(seed_spec()),
                                                    "callback_parameters"))
    assert all("additionalProperties" not in schema for schema in open_in_seed)


def test_an_extension_adds_marked_fields_and_operations(extensions: Path) -> None:
    (extensions / "a.yaml").write_text("""
x-eventstreamd-target-properties:
  callback_parameters:
    max_rate: {type: number, exclusiveMinimum: true, minimum: 0}
paths:
  /eventstream/{integration_id}/_frobnicate:
    post:
      operationId: frobnicate
      responses: {'200': {description: done}}
""")
    served = spec_module.spec()
    for schema in spec_module._target_objects(served, "callback_parameters"):
        assert schema["properties"]["max_rate"][MARK] is True
    assert _operations(served)["frobnicate"][MARK] is True
    assert "_frobnicate" in spec_module.spec_text()


def test_a_name_defined_twice_fails_at_load(extensions: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (extensions / name).write_text(
            "x-eventstreamd-target-properties:\n  s3_parameters:\n    format: {type: string}\n")
    with pytest.raises(SpecError, match="defined twice"):
        spec_module.spec()


def test_an_extension_may_not_redefine_a_seed_field(extensions: Path) -> None:
    (extensions / "a.yaml").write_text(
        "x-eventstreamd-target-properties:\n  callback_parameters:\n    api_key: {type: string}\n")
    with pytest.raises(SpecError, match="seed's own field"):
        spec_module.spec()


async def test_an_unknown_target_field_is_a_400_naming_it(daemon_factory: Factory) -> None:
    daemon = daemon_factory()
    async with ApiClient(daemon) as api:
        body = await api.request("POST", BASE, {
            "id": "typo", "integration_type": "permanent",
            "callback_parameters": {"callback_url": "http://127.0.0.1:9/x", "max_rte": 5}},
            expect=400)
        assert "callback_parameters.max_rte" in body["message"]
        body = await api.request("POST", BASE, {
            "id": "typo-s3", "integration_type": "permanent",
            "s3_parameters": {"bucket": "b-1", "aws_region": "us-east-1", "formt": "x",
                              "aws_access_key_id": "AKID", "aws_secret_access_key": "s"}},
            expect=400)
        assert "s3_parameters.formt" in body["message"]

"""Fuzzing: the HTTP API from its own OpenAPI document, and the CLI's inputs.

Schemathesis generates valid and invalid requests for every operation the API publishes
(over 1,000 in all); none may get a 5xx. Schemathesis keeps to JSON a serializer writes
and mostly to a field's bounds, so a second fuzzer sets every numeric field and every
``persona@version`` selector the OpenAPI document lists, on every route, to boundary
values: past int64, negative, zero, ``-0.0``, ``1e999``, ``NaN``. Hypothesis feeds the
``kizuna`` commands that answer at once random options and values; each must end with
exit 0, 1 or 2 and a message, never an unexpected exception. Crafted hostile bodies are
in test_serve_api and test_openai_api.
"""

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from typer.testing import CliRunner

from kizuna.bootstrap import bootstrap
from kizuna.cli import USER_ERRORS, app
from kizuna.config import Settings
from kizuna.model.finetune import FinetuneArgs
from kizuna.serve.runtime import Replica
from support import QuietProgress, in_process_replica

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
TOKEN = "fuzz-token"
EXAMPLES_PER_OPERATION = 300
CASES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    data = tmp_path_factory.mktemp("fuzz-data")
    bootstrap(
        Settings(data_dir=data, base_model=str(tiny_model_dir), device="cpu"),
        progress=QuietProgress(),
        args=FinetuneArgs(steps=1),
        personas=["tsundere", "cool"],
    )
    return data


@pytest.fixture(scope="module")
def replica(data_dir: Path, tiny_model_dir: Path) -> Iterator[Replica]:
    settings = Settings(
        data_dir=data_dir,
        base_model=str(tiny_model_dir),
        device="cpu",
        api_tokens=TOKEN,
        serve_max_in_flight=1000,
    )
    served = in_process_replica(settings)
    yield served
    served.close()
    print(f"\nschemathesis: {sum(CASES.values())} cases in all ({dict(CASES)})")


def _operations(replica: Replica) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", replica.app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_generated_request_gets_a_server_error(
    replica: Replica, mode: schemathesis.GenerationMode
) -> None:
    statuses: Counter[int] = Counter()
    for operation in _operations(replica):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            statuses[response.status_code] += 1
            assert response.status_code < 500, (
                f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
            )

        try:
            call()
        except Unsatisfiable:
            assert mode == schemathesis.GenerationMode.NEGATIVE  # a GET without parameters
    CASES[str(mode)] += sum(statuses.values())
    print(f"\nschemathesis {mode}: {sum(statuses.values())} cases, statuses {dict(statuses)}")


# --- boundary values in every numeric field and persona selector ---------------------

#: A valid, cheap body for every route that takes one; a route the API adds without one
#: here fails the test, so no route escapes the boundary fuzzing.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/v1/transform": {"text": "See you at 7.", "persona": "tsundere", "max_new_tokens": 2},
    "/v1/chat/completions": {
        "model": "cool",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "/v1/completions": {"model": "tsundere", "prompt": "The bus", "max_tokens": 2},
    "/v1/feedback": {"interaction_id": "nope", "thumbs_up": True},
}
#: As JSON text: what a serializer writes, and literals only hand-written JSON holds.
NUMBERS = [
    *map(str, [0, 1, -1, 2, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]),
    *["-0.0", "0.0", "0.5", "1e-320", "1e308", "-1e308", "1e999", "-1e999", "NaN", "Infinity"],
]
VERSIONS = [*NUMBERS[:11], "99999999999999999999", "²", "٣", "1.5", "", "0x1", " 1", "1e3"]


def _resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def _types(schema: dict[str, Any], document: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(schema, document)
    options = schema.get("anyOf") or schema.get("oneOf")
    return [t for option in options for t in _types(option, document)] if options else [schema]


def _targets(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(route, top-level field, kind) for every numeric field and selector."""
    found = []
    for path, operations in document["paths"].items():
        body = operations.get("post", {}).get("requestBody")
        if body is None:
            continue
        schema = _resolve(body["content"]["application/json"]["schema"], document)
        for name, field in schema["properties"].items():
            kinds = {t.get("type") for t in _types(field, document)}
            if kinds & {"integer", "number"}:
                found.append((path, name, "number"))
            if "persona@version" in field.get("description", ""):
                found.append((path, name, "key" if "object" in kinds else "selector"))
    return found


def _body(route: str, field: str, kind: str, value: str) -> str:
    """The route's valid body as JSON with ``field`` set to the raw ``value``."""
    body = {k: v for k, v in VALID_BODIES[route].items() if not (kind == "key" and k == "persona")}
    body[field] = "@@VALUE@@"
    text = json.dumps(body)
    if kind == "number":
        return text.replace('"@@VALUE@@"', value)
    selector = json.dumps(f"tsundere@{value}")
    return text.replace('"@@VALUE@@"', f"{{{selector}: 1.0}}" if kind == "key" else selector)


def test_boundary_values_in_every_numeric_field_and_selector_are_never_a_server_error(
    replica: Replica,
) -> None:
    document = replica.app.openapi()
    routes = {
        path for path, ops in document["paths"].items() if "requestBody" in ops.get("post", {})
    }
    assert routes == set(VALID_BODIES), "give every route with a body a valid one"
    targets = _targets(document)
    kinds = Counter(kind for *_, kind in targets)
    assert kinds["number"] > 20 and kinds["selector"] >= 3 and kinds["key"] >= 1, kinds
    client = TestClient(replica.app)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    statuses: Counter[int] = Counter()
    for route, field, kind in targets:
        for value in NUMBERS if kind == "number" else VERSIONS:
            response = client.post(route, content=_body(route, field, kind, value), headers=headers)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (route, field, value, response.text[:300])
    CASES["boundaries"] += sum(statuses.values())
    print(f"\nboundaries: {len(targets)} fields, {sum(statuses.values())} cases, {dict(statuses)}")


# --- the CLI -------------------------------------------------------------------------

#: Commands that answer at once whatever they are given (no training, no servers).
COMMANDS = [
    ["transform"],
    ["personas", "show"],
    ["personas", "validate"],
    ["rollout", "status"],
    ["rollout", "promote"],
    ["rollout", "pause"],
    ["rollout", "start", "--detach"],
    ["db", "upgrade"],
    ["device", "keygen"],
]
OPTIONS = [
    "--persona",
    "--strength",
    "--max-new-tokens",
    "--temperature",
    "--candidate",
    "--steps",
    "--min-requests",
    "--deadline-s",
    "--data-dir",
    "--name",
    "--server",
    "",
]
VALUES = st.one_of(
    st.sampled_from(["tsundere", "tsundere@1", "cool@99", "nope", "", "-1", "0", "1e309"]),
    st.sampled_from(["nan", "inf", "0.5,0.1", "\x00", "☃", "../../etc", "a" * 300]),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=30),
)
ARGUMENTS = st.tuples(
    st.sampled_from(COMMANDS),
    st.lists(st.tuples(st.sampled_from(OPTIONS), VALUES), max_size=4),
).map(lambda drawn: [*drawn[0], *[part for pair in drawn[1] for part in pair if part]])


@given(arguments=ARGUMENTS)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_cli_never_crashes_on_any_input(
    arguments: list[str], data_dir: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIZUNA_DATA_DIR", str(data_dir))
    monkeypatch.setenv("KIZUNA_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("KIZUNA_DEVICE", "cpu")
    result = CliRunner().invoke(app, arguments)
    # ``kizuna`` turns these into one error line and exit 2 (cli.main); others are crashes.
    crashed = result.exception is not None and not isinstance(
        result.exception, (SystemExit, *USER_ERRORS)
    )
    assert not crashed, f"kizuna {arguments!r} raised {result.exception!r}"
    assert result.exit_code in {0, 1, 2}, (arguments, result.output)

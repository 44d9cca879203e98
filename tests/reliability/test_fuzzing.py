"""Fuzzing: the HTTP API from its own OpenAPI document, and the CLI's inputs.

Schemathesis generates valid and invalid requests for every operation the API publishes
(over 1,000 in all); none may get a 5xx. Hypothesis feeds the ``kizuna`` commands that
answer at once random options and values; each must end with exit 0, 1 or 2 and a
message, never an unexpected exception. Crafted hostile bodies are in test_serve_api.
"""

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
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

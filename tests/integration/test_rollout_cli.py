"""`kizuna rollout start` as a user runs it, against a serving replica taking traffic:
the canary's share shows in /v1/models, live metrics decide, promotion or rollback."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kizuna.config import Settings
from kizuna.store import adapters
from kizuna.store.db import open_store, transaction
from support import in_process_replica, rollout_env

pytestmark = pytest.mark.integration
TOKEN = "rollout-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = {
    "style_accuracy": 0.9,
    "content_preservation": 0.95,
    "latency_p95_ms": 120.0,
    "gates": {"strength_monotonic": True},
}


def _candidate(settings: Settings) -> int:
    """A candidate with a passing report (the stable artifact, registered again)."""
    with transaction(open_store(settings.resolved_database_url)) as session:
        stable = adapters.stable_adapter(session, persona="tsundere")
        return adapters.register_adapter(
            session,
            persona="tsundere",
            artifact_url=stable.artifact_url,
            sha256=stable.sha256,
            metrics=GOOD,
        ).version


def _serving(settings: Settings) -> Settings:
    return Settings(
        data_dir=settings.data_dir,
        base_model=settings.base_model,
        device="cpu",
        api_tokens=TOKEN,
        serve_refresh_s=0.01,
    )


def _rollout(settings: Settings, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "kizuna", "rollout", "start", "--persona", "tsundere"]
    return subprocess.Popen(
        [*command, *args, "--interval-s", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=rollout_env(settings),
    )


def _models(client: TestClient) -> dict[str, Any]:
    response = client.get("/v1/models", headers=AUTH)
    assert response.status_code == 200
    return {m["id"]: m for m in response.json()["data"]}


def test_a_candidate_goes_through_canary_to_stable_under_traffic(bootstrapped: Settings) -> None:
    version = _candidate(bootstrapped)
    replica = in_process_replica(_serving(bootstrapped))
    client = TestClient(replica.app)
    process = _rollout(bootstrapped, "--candidate", str(version), "--min-requests", "3")
    shares, served = set(), set()
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            body = {"text": "Can you help me?", "persona": "tsundere", "max_new_tokens": 4}
            reply = client.post("/v1/transform", json=body, headers=AUTH)
            assert reply.status_code == 200, reply.text
            served.add(reply.json()["adapter_version"])
            replica.service.journal.flush()  # the rollout reads what was logged
            shares.add(_models(client)["tsundere"]["canary_weight"])
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        replica.close()
    assert process.returncode == 0, stdout + stderr
    assert "canary v2 at 10% of traffic (step 1)" in stdout
    assert "canary v2 at 50% of traffic (step 2)" in stdout
    assert "promoted v2 to stable" in stdout
    assert {0.1, 0.5} <= shares and served == {1, 2}
    restarted = in_process_replica(_serving(bootstrapped))
    models = _models(TestClient(restarted.app))
    restarted.close()
    assert models["tsundere"]["stable_version"] == version
    assert models["tsundere"]["canary_version"] is None


@pytest.mark.reliability
def test_a_canary_nobody_calls_is_rolled_back(bootstrapped: Settings) -> None:
    version = _candidate(bootstrapped)
    process = _rollout(bootstrapped, "--candidate", str(version), "--deadline-s", "2")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stdout + stderr
    assert f"rolled back v{version}: no canary traffic for" in stdout
    with open_store(bootstrapped.resolved_database_url)() as session:
        assert adapters.stable_adapter(session, persona="tsundere").version == 1
        assert adapters.canary_adapter(session, persona="tsundere") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give either --candidate VERSION or --retrain"),
        (("--candidate", "9"), "persona 'tsundere' has no adapter version 9"),
        (("--candidate", "1", "--steps", "0.5,0.2"), "steps must rise"),
    ],
)
def test_bad_rollouts_are_refused_with_a_message(
    bootstrapped: Settings, args: tuple[str, ...], message: str
) -> None:
    process = _rollout(bootstrapped, *args)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stdout + stderr
    assert message in stderr

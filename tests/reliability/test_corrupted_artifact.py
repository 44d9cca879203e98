"""A corrupted adapter artifact (its sha256 no longer matches) never reaches traffic.

A new stable version whose stored weights were tampered with after publishing is refused
by the replica; the persona's requests stay on the version that loaded before, and a
request naming the refused version explicitly gets a 503 that says why.
"""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kizuna.artifacts import publish_directory
from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.model.finetune import FinetuneArgs
from kizuna.store.adapters import promote, register_adapter
from kizuna.store.db import open_store, transaction
from kizuna.store.models import AdapterStatus
from support import QuietProgress, in_process_replica, random_adapter

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
AUTH = {"Authorization": "Bearer corrupt-test"}
BODY = {"text": "The shop opens at ten.", "persona": "tsundere", "max_new_tokens": 4}


def test_a_corrupted_new_stable_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        base_model=str(tiny_model_dir),
        device="cpu",
        api_tokens="corrupt-test",
        serve_refresh_s=0.01,
    )
    bootstrap(settings, progress=QuietProgress(), args=FinetuneArgs(steps=1), personas=["tsundere"])
    replica = in_process_replica(settings)
    client = TestClient(replica.app)
    try:
        assert client.post("/v1/transform", json=BODY, headers=AUTH).json()["adapter_version"] == 1

        adapter = random_adapter(tiny_model_dir, tmp_path / "v2", seed=5, rank=4)
        published = publish_directory(
            adapter, root_url=settings.resolved_artifact_url, persona="tsundere"
        )
        stored = Path(published.url.removeprefix("file://")) / "adapter_model.safetensors"
        stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")  # bit rot, or an attacker
        sessions = open_store(settings.resolved_database_url)
        with transaction(sessions) as session:
            register_adapter(
                session,
                persona="tsundere",
                artifact_url=published.url,
                sha256=published.sha256,
                status=AdapterStatus.CANDIDATE,
            )
            promote(session, persona="tsundere", version=2)

        answers = [client.post("/v1/transform", json=BODY, headers=AUTH) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert {a.json()["adapter_version"] for a in answers} == {1}
        assert replica.service.router.refused.keys() == {("tsundere", 2)}

        explicit = client.post(
            "/v1/transform", json={**BODY, "persona": "tsundere@2"}, headers=AUTH
        )
        assert explicit.status_code == 503
        assert "corrupted" in explicit.json()["detail"]
        assert explicit.headers["Retry-After"]
    finally:
        replica.close()

    # A replica started after the promotion has no good version resident to stay on:
    # it refuses with a retryable 503 instead of serving the tampered weights.
    fresh = in_process_replica(settings)
    try:
        refused = TestClient(fresh.app).post("/v1/transform", json=BODY, headers=AUTH)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
    finally:
        fresh.close()

"""The app on real Ray Serve: concurrent requests over several personas share batches."""

import concurrent.futures
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.model.finetune import FinetuneArgs
from kizuna.serve import launch
from kizuna.serve.journal import InteractionJournal
from kizuna.store.db import make_engine, session_factory
from kizuna.store.interactions import count_interactions
from support import QuietProgress, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = "ray-test-token"
PERSONAS = ["tsundere", "cool", "gentle"]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_concurrent_requests_share_mixed_batches_and_are_all_recorded(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        base_model=str(tiny_model_dir),
        device="cpu",
        api_tokens=TOKEN,
        serve_port=free_port(),
        serve_batch_wait_ms=200,
        serve_max_batch_size=8,
    )
    bootstrap(
        settings,
        progress=QuietProgress(),
        args=FinetuneArgs(steps=1, batch_size=4),
        personas=PERSONAS,
    )
    url = launch.start(settings)
    try:

        def call(i: int) -> httpx.Response:
            body = {
                "text": f"Request number {i} is here.",
                "persona": PERSONAS[i % 3],
                "strength": 0.5 + 0.05 * (i % 5),
                "max_new_tokens": 4,
                "consent": True,
            }
            return httpx.post(
                f"{url}/v1/transform",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=120,
            )

        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(call, range(24)))
        assert [r.status_code for r in responses] == [200] * 24, responses[0].text
        assert {r.json()["persona"] for r in responses} == set(PERSONAS)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        batches = _metric(metrics, "kizuna_batch_size_count")
        rows = _metric(metrics, "kizuna_batch_size_sum")
        assert rows == 24 and batches < 24  # requests shared engine passes
        single_adapter_batches = _metric(
            metrics, r'kizuna_batch_distinct_adapters_bucket\{le="1.0"\}'
        )
        assert single_adapter_batches < batches  # some batches mixed personas
        assert httpx.get(f"{url}/v1/transform", timeout=30).status_code in {401, 405}
        client_env = {**os.environ, "KIZUNA_API_TOKENS": TOKEN, "KIZUNA_DATA_DIR": str(tmp_path)}
        transformed = subprocess.run(
            [
                sys.executable,
                "-m",
                "kizuna",
                "transform",
                "Thanks a lot.",
                "--persona",
                "cool",
                "--max-new-tokens",
                "4",
                "--server",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=client_env,
        )
        assert transformed.returncode == 0, transformed.stderr
        assert "cool v1" in transformed.stderr
        chatted = subprocess.run(
            [
                sys.executable,
                "-m",
                "kizuna",
                "chat",
                "--persona",
                "gentle",
                "--max-new-tokens",
                "4",
                "--server",
                url,
            ],
            input="hello\n",
            capture_output=True,
            text=True,
            timeout=300,
            env=client_env,
        )
        assert chatted.returncode == 0, chatted.stderr
        assert chatted.stdout.startswith("gentle> ")
    finally:
        launch.stop()
    sessions = session_factory(make_engine(settings.resolved_database_url))
    journal = InteractionJournal(settings.data_dir / "journal", sessions)  # replays leftovers
    journal.start()
    journal.close()
    with sessions() as session:
        assert count_interactions(session) == 26  # 24 + the two CLI clients

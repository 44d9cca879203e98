"""A burst at three times capacity: the excess is refused with ``Retry-After``, at once,
and the server's memory does not grow from burst to burst."""

import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.model.finetune import FinetuneArgs
from support import QuietProgress, free_port

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
TOKEN = "burst-token"
CAPACITY = 4  # serve_max_in_flight
BURSTS = 6


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_burst_at_three_times_capacity_is_refused_cleanly_and_memory_stays_flat(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    bootstrap(
        Settings(data_dir=data, base_model=str(tiny_model_dir), device="cpu"),
        progress=QuietProgress(),
        args=FinetuneArgs(steps=1),
        personas=["tsundere"],
    )
    port = free_port()
    env = {
        **os.environ,
        "KIZUNA_DATA_DIR": str(data),
        "KIZUNA_BASE_MODEL": str(tiny_model_dir),
        "KIZUNA_DEVICE": "cpu",
        "KIZUNA_API_TOKENS": TOKEN,
        "KIZUNA_SERVE_MAX_IN_FLIGHT": str(CAPACITY),
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("replica_server.py")), str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=120)
    try:
        for _ in range(240):
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)

        def call(i: int) -> httpx.Response:
            body = {
                "text": f"Burst request {i} about the weather tomorrow.",
                "persona": "tsundere",
                "max_new_tokens": 48,
            }
            return client.post(
                f"{url}/v1/transform", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
            )

        statuses: Counter[int] = Counter()
        refusal_ms: list[float] = []
        rss_kib = []
        with ThreadPoolExecutor(max_workers=3 * CAPACITY) as pool:
            for burst in range(BURSTS):
                started = time.perf_counter()
                for response in pool.map(call, range(burst * 100, burst * 100 + 3 * CAPACITY)):
                    statuses[response.status_code] += 1
                    if response.status_code in {429, 503}:
                        assert float(response.headers["Retry-After"]) > 0
                        refusal_ms.append(response.elapsed.total_seconds() * 1000)
                rss_kib.append(_rss_kib(server.pid))
                assert time.perf_counter() - started < 120
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=60)
    print(
        f"\nburst: {BURSTS} × {3 * CAPACITY} requests at capacity {CAPACITY}: "
        f"statuses {dict(statuses)}, slowest refusal {max(refusal_ms, default=0):.0f} ms, "
        f"RSS MiB per burst {[round(r / 1024) for r in rss_kib]}"
    )
    assert set(statuses) <= {200, 429, 503}
    assert statuses[200] >= BURSTS * CAPACITY // 2  # capacity was used, not refused wholesale
    assert statuses[429] + statuses[503] >= BURSTS * CAPACITY  # the excess was refused
    # Memory: after the first burst has warmed the caches, it does not grow with load.
    assert rss_kib[-1] <= rss_kib[1] * 1.10, rss_kib

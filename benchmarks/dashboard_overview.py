"""Dashboard page time as the interaction log grows: 1k vs 100k interactions.

A temporary SQLite store holds the six personas, three evaluated versions each, and N
interactions spread over the personas and the last day; each page is served by the real
app (in-process ASGI client, signed in) five times, and the median is reported with its
ratio to the 1k-interaction store measured in the same run. With Chromium installed, the
overview is also loaded in headless Chromium from uvicorn on loopback (navigation
duration: request to load event, median of 5).

    python benchmarks/dashboard_overview.py [--sizes 1000 100000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import statistics
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from common.summary import record
from kizuna.config import Settings
from kizuna.dashboard.app import build_app
from kizuna.dashboard.auth import Access
from kizuna.personas.loader import profile_files
from kizuna.rollout.backends import LocalOps
from kizuna.store.adapters import register_adapter
from kizuna.store.db import open_store, transaction
from kizuna.store.models import AdapterStatus, Interaction, utcnow

PAGES = ("/", "/traffic", "/rollouts")
TOKEN = "benchmark"


def populate(settings: Settings, interactions: int) -> None:
    """Six personas with three evaluated versions each, and ``interactions`` requests."""
    sessions = open_store(settings.resolved_database_url)
    personas = sorted(profile_files(settings.resolved_personas_dir))
    rng = random.Random(0)
    with transaction(sessions) as session:
        for persona in personas:
            for version in (1, 2, 3):
                register_adapter(
                    session,
                    persona=persona,
                    artifact_url=f"file:///a/{persona}/{version}",
                    sha256="0" * 64,
                    status=AdapterStatus.STABLE if version == 3 else AdapterStatus.RETIRED,
                    metrics={"style_accuracy": 0.7 + 0.05 * version, "latency_p95_ms": 90.0},
                )
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "public_id": str(uuid.uuid4()),
            "created_at": now - timedelta(seconds=rng.uniform(0, 86_400)),
            "persona": rng.choice(personas),
            "adapter_versions": {},
            "strength": 1.0,
            "request_text": "Can you help me with this?",
            "output_text": "Hmph. Fine, I'll help.",
            "entropy_mean": rng.uniform(0.2, 3.0),
            "entropy_max": 4.0,
            "token_entropies": [1.0] * 8,
            "token_margins": [],
            "latency_ms": rng.uniform(30, 300),
            "consent": True,
            "feedback": rng.choice([None, None, None, 1, -1]),
        }
        for _ in range(interactions)
    ]
    with transaction(sessions) as session:
        for start in range(0, len(rows), 10_000):
            session.execute(insert(Interaction), rows[start : start + 10_000])


def dashboard(settings: Settings) -> FastAPI:
    """The dashboard on the benchmark's store; scripts sign in with the Bearer token."""
    sessions = open_store(settings.resolved_database_url)
    return build_app(
        access=Access(TOKEN),
        sessions=sessions,
        backend=LocalOps(settings, sessions),
        personas_dir=settings.resolved_personas_dir,
    )


def page_times(settings: Settings) -> dict[str, float]:
    """Median milliseconds of each page, signed in."""
    app = dashboard(settings)
    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    times = {}
    for path in PAGES:
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            assert client.get(path).status_code == 200
            samples.append((time.perf_counter() - start) * 1000)
        times[path] = statistics.median(samples)
    return times


def browser_load_ms(settings: Settings) -> float | None:
    """Median navigation time of the overview in headless Chromium, if it is installed."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    import uvicorn
    from playwright.sync_api import sync_playwright

    app = dashboard(settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_context(
                extra_http_headers={"Authorization": f"Bearer {TOKEN}"}
            ).new_page()
            samples = []
            for _ in range(5):
                page.goto(f"http://127.0.0.1:{port}/")
                samples.append(
                    page.evaluate("performance.getEntriesByType('navigation')[0].duration")
                )
            browser.close()
    finally:
        server.should_exit = True
        thread.join()
    return float(statistics.median(samples))


def main() -> None:
    """Measure every size and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    sizes = parser.parse_args().sizes
    results: dict[int, dict[str, float]] = {}
    browser: dict[int, float | None] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as directory:
            settings = Settings(data_dir=Path(directory))
            populate(settings, size)
            results[size] = page_times(settings)
            browser[size] = browser_load_ms(settings)
    table = Table(title="dashboard pages (median of 5, 6 personas, in-process ASGI, SQLite)")
    table.add_column("interactions", justify="right")
    for path in PAGES:
        table.add_column(f"{path} ms", justify="right")
        table.add_column("÷ smallest", justify="right")
    table.add_column("overview in Chromium ms", justify="right")
    base = results[sizes[0]]
    for size in sizes:
        cells = [f"{size:,}"]
        for path in PAGES:
            cells += [f"{results[size][path]:.1f}", f"{results[size][path] / base[path]:.2f}"]
        loaded = browser[size]
        cells.append(f"{loaded:.0f}" if loaded is not None else "no chromium")
        table.add_row(*cells)
        for path in PAGES:
            figure = f"{path} at {size:,} interactions"
            record("dashboard", figure, results[size][path] / base[path], f"{sizes[0]:,}")
    Console().print(table)


if __name__ == "__main__":
    main()

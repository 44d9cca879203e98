"""The k8s tier: a real kube-apiserver (v1.20.2) and controller-manager on loopback,
started by ``scripts/local_k8s.py`` once per session and stopped after it.

There is no scheduler and no kubelet, so no pod ever runs: the tier proves what the API
server decides (schemas, server-side apply, RBAC, owner references and garbage
collection, finalizers, watches) and plays the part of what would run in pods — the
hook Jobs' completion, KubeRay's RayJob status, the retrain job's registration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_support import api_client, install_kuberay_crds, local_k8s
from kubernetes import client

READY: dict[str, float] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.k8s)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "seconds" in READY:
        terminalreporter.write_line(f"k8s tier: the API server came up in {READY['seconds']:.1f} s")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with local_k8s.local_cluster(tmp_path_factory.mktemp("k8s")) as started:
        READY["seconds"] = started.ready_s
        yield started


@pytest.fixture(scope="session")
def admin(cluster: Any) -> client.ApiClient:
    return api_client(cluster.kubeconfig)


@pytest.fixture(scope="session")
def kuberay(admin: client.ApiClient) -> None:
    install_kuberay_crds(admin)

"""Helpers of the k8s tier (see conftest.py): the local control plane's script, helm and
kubectl runs, KubeRay's CRDs made acceptable to v1.20, and the hook-Job completer."""

from __future__ import annotations

import importlib.util
import lzma
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
CHART = REPO / "charts" / "kizuna"
KUBERAY_CRDS = Path(__file__).parent / "kuberay-crds"


def _local_k8s() -> Any:
    spec = importlib.util.spec_from_file_location("local_k8s", REPO / "scripts" / "local_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_k8s"] = module
    spec.loader.exec_module(module)
    return module


local_k8s = _local_k8s()


def api_client(kubeconfig: Path) -> client.ApiClient:
    """A client that acts as the kubeconfig's identity."""
    return config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]


def run(*argv: str, kubeconfig: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A helm or kubectl command (from ``.tools/bin``) against the cluster."""
    binary = TOOLS / argv[0]
    assert binary.exists(), f"{binary} is missing; `make chart` fetches it"
    result = subprocess.run(
        [str(binary), *argv[1:]],
        env={
            "KUBECONFIG": str(kubeconfig),
            "HOME": str(kubeconfig.parent),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
    return result


def for_v1_20(node: Any) -> Any:
    """A CRD schema v1.20 accepts: without ``x-kubernetes-validations`` (CEL rules arrived
    in 1.25; v1.20 refuses the unknown key) and without ``default: ""`` on strings (v1.20
    reads it as null and refuses it; a list-map key that loses its default becomes
    required, which v1.20 asks of such keys). Only KubeRay's CRDs need this."""
    if isinstance(node, dict):
        items = node.get("items", {})
        for key in node.get("x-kubernetes-list-map-keys", []):
            if items.get("properties", {}).get(key, {}).get("default") == "":
                items["required"] = sorted({*items.get("required", []), key})
        return {
            k: for_v1_20(v)
            for k, v in node.items()
            if k != "x-kubernetes-validations" and not (k == "default" and v == "")
        }
    if isinstance(node, list):
        return [for_v1_20(item) for item in node]
    return node


def install_kuberay_crds(admin: client.ApiClient) -> None:
    """KubeRay v1.7's CRDs (RayCluster, RayJob, RayService), established."""
    extensions = client.ApiextensionsV1Api(admin)
    for packed in sorted(KUBERAY_CRDS.glob("*.yaml.xz")):
        body = for_v1_20(yaml.safe_load(lzma.decompress(packed.read_bytes())))
        try:
            extensions.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        wait_for(lambda n=body["metadata"]["name"]: _established(extensions, n), what=packed.name)


def _established(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    crd = extensions.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def wait_for(condition: Any, *, what: str, timeout_s: float = 60.0) -> Any:
    """Poll ``condition`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class HookJobsComplete:
    """Plays the kubelet for Helm's hook Jobs: marks each one Complete as soon as it
    exists (nothing can run its pod), so ``helm install``'s hook wait ends."""

    def __init__(self, admin: client.ApiClient, namespace: str) -> None:
        self._batch = client.BatchV1Api(admin)
        self._namespace = namespace
        self._stop = threading.Event()
        self.completed: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HookJobsComplete:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = self._batch.list_namespaced_job(self._namespace).items
            except ApiException:
                jobs = []
            for job in jobs:
                annotations = job.metadata.annotations or {}
                if "helm.sh/hook" in annotations and not (job.status and job.status.succeeded):
                    self._complete(job)
            self._stop.wait(0.2)

    def _complete(self, job: client.V1Job) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "status": {
                "startTime": now,
                "completionTime": now,
                "succeeded": 1,
                "conditions": [
                    {
                        "type": "Complete",
                        "status": "True",
                        "lastProbeTime": now,
                        "lastTransitionTime": now,
                    }
                ],
            }
        }
        try:
            self._batch.patch_namespaced_job_status(job.metadata.name, self._namespace, status)
            self.completed.add(job.metadata.name)
        except ApiException:
            pass  # deleted meanwhile (hook-delete-policy), or recreated: the next pass

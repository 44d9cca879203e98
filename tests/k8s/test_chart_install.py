"""The chart against a real API server: helm install with Helm 4's defaults (server-side
apply), upgrade, rollback and uninstall for every CI scenario; afterwards nothing of the
release is left but what the chart keeps on purpose (the artifacts PVC, the bundled
database's password), once the garbage collector has run."""

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_support import CHART, HookJobsComplete, local_k8s, run
from kubernetes import client

SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
#: Objects every namespace holds whatever is installed in it.
NAMESPACE_DEFAULTS = (
    "serviceaccount/default",
    "secret/default-token-",
    "configmap/kube-root-ca.crt",
)


def _namespaced_kinds(kubeconfig: Path) -> str:
    listed = run(
        "kubectl",
        "api-resources",
        "--verbs=list",
        "--namespaced",
        "-o",
        "name",
        kubeconfig=kubeconfig,
    ).stdout.split()
    return ",".join(kind for kind in listed if kind not in {"events", "events.events.k8s.io"})


def _objects(kubeconfig: Path, namespace: str, kinds: str) -> set[str]:
    listed = run(
        "kubectl",
        "get",
        kinds,
        "-n",
        namespace,
        "-o",
        "name",
        "--ignore-not-found",
        kubeconfig=kubeconfig,
    ).stdout.split()
    names = {name.replace(".kizuna.ai", "").replace(".ray.io", "") for name in listed}
    return {n for n in names if not any(n.startswith(d) for d in NAMESPACE_DEFAULTS)}


def _kept_on_purpose(manifest: str) -> set[str]:
    """What outlives an uninstall by design: objects the chart marks ``keep``, and the
    volumes of StatefulSets (Kubernetes never deletes those with their StatefulSet)."""
    kept = set()
    for document in filter(None, yaml.safe_load_all(manifest)):
        metadata = document["metadata"]
        if (metadata.get("annotations") or {}).get("helm.sh/resource-policy") == "keep":
            kept.add(f"{document['kind'].lower()}/{metadata['name']}")
        if document["kind"] == "StatefulSet":
            spec = document["spec"]
            for claim in spec.get("volumeClaimTemplates", []):
                for ordinal in range(spec.get("replicas", 1)):
                    name = f"{claim['metadata']['name']}-{metadata['name']}-{ordinal}"
                    kept.add(f"persistentvolumeclaim/{name}")
    return kept


def _configmap(admin: Any, namespace: str, name: str) -> str:
    return str(client.CoreV1Api(admin).read_namespaced_config_map(name, namespace).data)


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.stem)
def test_install_upgrade_rollback_uninstall_leave_nothing(
    cluster: Any, admin: Any, kuberay: None, values: Path
) -> None:
    namespace = f"chart-{values.stem.removesuffix('-values')}"
    kubeconfig = cluster.kubeconfig
    run("kubectl", "create", "namespace", namespace, kubeconfig=kubeconfig)
    release = ["kizuna", str(CHART), "-n", namespace, "-f", str(values), "--timeout", "120s"]
    with HookJobsComplete(admin, namespace):
        run("helm", "install", *release, kubeconfig=kubeconfig)
        installed = _objects(kubeconfig, namespace, _namespaced_kinds(kubeconfig))
        assert "configmap/kizuna-kizuna-settings" in installed, installed
        run("helm", "upgrade", *release, "--set", "settings.device=cpu", kubeconfig=kubeconfig)
        assert 'device: "cpu"' in _configmap(admin, namespace, "kizuna-kizuna-settings")
        run(
            "helm",
            "rollback",
            "kizuna",
            "1",
            "-n",
            namespace,
            "--timeout",
            "120s",
            kubeconfig=kubeconfig,
        )
    settings = _configmap(admin, namespace, "kizuna-kizuna-settings")
    original = yaml.safe_load(values.read_text())["settings"].get("device", "auto")
    assert f'device: "{original}"' in settings
    history = run(
        "helm", "history", "kizuna", "-n", namespace, "-o", "yaml", kubeconfig=kubeconfig
    ).stdout
    assert [entry["revision"] for entry in yaml.safe_load(history)] == [1, 2, 3]
    manifest = run("helm", "get", "manifest", "kizuna", "-n", namespace, kubeconfig=kubeconfig)
    kept = _kept_on_purpose(manifest.stdout)
    run("helm", "uninstall", "kizuna", "-n", namespace, "--timeout", "120s", kubeconfig=kubeconfig)
    kinds = _namespaced_kinds(kubeconfig)
    # ReplicaSets and pods made by Deployments go once the garbage collector sees them.
    deadline = time.monotonic() + 90
    while (left := _objects(kubeconfig, namespace, kinds)) != kept and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == kept, f"left behind: {sorted(left - kept)}; kept gone: {sorted(kept - left)}"
    cluster_wide = run(
        "kubectl",
        "get",
        "clusterroles,clusterrolebindings",
        "-o",
        "name",
        "-l",
        "app.kubernetes.io/instance=kizuna",
        kubeconfig=kubeconfig,
    ).stdout
    assert cluster_wide.strip() == ""


def test_without_kuberay_the_install_says_what_to_install_first(tmp_path: Path) -> None:
    # A cluster of its own: the session's has KubeRay's CRDs.
    with local_k8s.local_cluster(tmp_path / "bare") as bare:
        result = run(
            "helm",
            "install",
            "kizuna",
            str(CHART),
            "-n",
            "default",
            "-f",
            str(CHART / "ci" / "minimal-values.yaml"),
            kubeconfig=bare.kubeconfig,
            check=False,
        )
    assert result.returncode != 0
    assert "KubeRay's CRDs are not installed" in result.stderr, result.stderr
    assert "helm install kuberay-operator" in result.stderr

"""The operator out of cluster, as the chart's ServiceAccount (its RBAC really enforced),
and the dashboard's kubernetes backend with its own Role, against the real API server.

The test plays what would run in pods: KubeRay (it patches a RayJob's status the way
KubeRay does) and the retrain job (it registers the candidate in the store)."""

import base64
import copy
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_support import CHART, REPO, HookJobsComplete, api_client, run, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from sqlalchemy.orm import Session, sessionmaker

from kizuna.config import Settings
from kizuna.rollout.backends import KubernetesOps
from kizuna.store import adapters
from kizuna.store.db import open_store
from support import log_served, register_retrain_result, register_stable_tsundere

NAMESPACE = "ops"
GROUP, VERSION = "kizuna.ai", "v1alpha1"
EXAMPLES = CHART / "examples"


def _example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return body


@pytest.fixture(scope="module")
def release(cluster: Any, admin: client.ApiClient, kuberay: None) -> dict[str, str]:
    """The chart installed in ``ops`` with the dashboard; its objects by kind/name."""
    run("kubectl", "create", "namespace", NAMESPACE, kubeconfig=cluster.kubeconfig)
    values = CHART / "ci" / "minimal-values.yaml"
    with HookJobsComplete(admin, NAMESPACE):
        run(
            "helm",
            "install",
            "kizuna",
            str(CHART),
            "-n",
            NAMESPACE,
            "-f",
            str(values),
            "--set",
            "dashboard.enabled=true",
            "--set",
            "operator.reconcileIntervalSeconds=1",
            "--timeout",
            "120s",
            kubeconfig=cluster.kubeconfig,
        )
    manifest = run(
        "helm", "get", "manifest", "kizuna", "-n", NAMESPACE, kubeconfig=cluster.kubeconfig
    ).stdout
    return {
        f"{d['kind']}/{d['metadata']['name']}": yaml.safe_dump(d)
        for d in yaml.safe_load_all(manifest)
        if d
    }


def _service_account_kubeconfig(
    cluster: Any, admin: client.ApiClient, name: str, directory: Path
) -> Path:
    """A kubeconfig carrying the token v1.20's token controller made for ``name``."""
    core = client.CoreV1Api(admin)
    secrets = wait_for(
        lambda: core.read_namespaced_service_account(name, NAMESPACE).secrets,
        what=f"{name}'s token",
    )
    secret = core.read_namespaced_secret(secrets[0].name, NAMESPACE)
    token = base64.b64decode(secret.data["token"]).decode()
    path = directory / f"{name}.kubeconfig"
    path.write_text(cluster.kubeconfig_for(token, NAMESPACE))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'kizuna.db'}"
    sessions = open_store(url)
    register_stable_tsundere(sessions)
    return url, sessions


class Operator:
    """``kopf run`` as the chart's operator Deployment runs it, but here, as its SA."""

    def __init__(self, kubeconfig: Path, template: Path, database_url: str, logs: Path) -> None:
        self.logs = logs
        self._env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KIZUNA_OPERATOR_JOB_TEMPLATE": str(template),
            "KIZUNA_OPERATOR_INTERVAL_S": "1",
            "KIZUNA_DATABASE_URL": database_url,
            "KIZUNA_DATA_DIR": str(logs.parent),
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        kopf = Path(sys.executable).parent / "kopf"
        with self.logs.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(kopf),
                    "run",
                    "--standalone",
                    "--namespace",
                    NAMESPACE,
                    "-m",
                    "kizuna_operator.handlers",
                ],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )

    def stop(self, *, kill: bool = False) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        os.killpg(self._process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def refused(self) -> list[str]:
        """Log lines where the API server refused the operator something."""
        text = self.logs.read_text(errors="replace")
        return [line for line in text.splitlines() if "403" in line or "Forbidden" in line]


@pytest.fixture(scope="module")
def operator(
    cluster: Any,
    admin: client.ApiClient,
    release: dict[str, str],
    store: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    directory = tmp_path_factory.mktemp("operator")
    template = directory / "rayjob.yaml"
    configmap = yaml.safe_load(release["ConfigMap/kizuna-kizuna-rayjob-template"])
    template.write_text(configmap["data"]["rayjob.yaml"])
    kubeconfig = _service_account_kubeconfig(cluster, admin, "kizuna-kizuna-operator", directory)
    running = Operator(kubeconfig, template, store[0], directory / "operator.log")
    running.start()
    custom = client.CustomObjectsApi(admin)
    personality = _example("personality-tsundere.yaml")
    personality["spec"]["gates"]["minCanaryRequests"] = 3
    personality["spec"]["rollout"]["steps"] = [0.25]
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "personalities", personality)
    try:
        yield running
    finally:
        running.stop()
        assert running.refused() == [], "the operator's Role refused a call"


def _custom(admin: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(admin)


def _run_status(admin: client.ApiClient, name: str) -> dict[str, Any]:
    body = _custom(admin).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "retrainruns", name
    )
    return dict(body.get("status") or {})


def _wait_phase(admin: client.ApiClient, name: str, phase: str) -> dict[str, Any]:
    return wait_for(
        lambda: (s := _run_status(admin, name)).get("phase") == phase and s,
        what=f"{name} to reach {phase} (status: {_run_status(admin, name)})",
        timeout_s=90,
    )


def _pins(admin: client.ApiClient) -> dict[str, Any]:
    body = _custom(admin).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "personalities", "tsundere"
    )
    return dict(body["spec"]["adapters"])


def _rayjobs(admin: client.ApiClient) -> list[dict[str, Any]]:
    listed = _custom(admin).list_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs")
    return list(listed["items"])


def _start_run(admin: client.ApiClient, name: str) -> dict[str, Any]:
    body = copy.deepcopy(_example("retrainrun-tsundere.yaml"))
    body["metadata"]["name"] = name
    _custom(admin).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "retrainruns", body)
    return _wait_phase(admin, name, "Training")


def _finish_job(admin: client.ApiClient, sessions: sessionmaker[Session], job: str) -> int:
    """What the retrain job and KubeRay would do: register a candidate, mark the RayJob."""
    version = register_retrain_result(sessions, job_name=job)
    assert version is not None
    status = {"status": {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}}
    _custom(admin).patch_namespaced_custom_object_status(
        "ray.io", "v1", NAMESPACE, "rayjobs", job, status
    )
    return version


def _versions(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return [a.version for a in adapters.list_adapters(session)]


def test_a_run_drives_a_rayjob_to_promotion_and_survives_an_operator_kill(
    admin: client.ApiClient, operator: Operator, store: Any, release: dict[str, str]
) -> None:
    sessions = store[1]
    wait_for(lambda: _pins(admin).get("stable") == 1, what="the Personality pinned")
    status = _start_run(admin, "promote-me")
    job_name = status["rayJob"]
    [job] = _rayjobs(admin)
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("RetrainRun", "promote-me")
    assert f'"job_name": "{job_name}"' in job["spec"]["entrypoint"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == "kizuna-kizuna-retrain"
    candidate = _finish_job(admin, sessions, job_name)
    canary = _wait_phase(admin, "promote-me", "Canary")
    assert canary["candidateVersion"] == candidate
    wait_for(lambda: _pins(admin).get("canary") == candidate, what="the canary pinned")

    versions_before = _versions(sessions)
    operator.stop(kill=True)  # mid-rollout, no chance to clean up
    operator.start()
    log_served(sessions, version=candidate, n=3)
    promoted = _wait_phase(admin, "promote-me", "Promoted")
    assert promoted["conditions"][0]["status"] == "True"
    wait_for(lambda: _pins(admin).get("stable") == candidate, what="the Personality promoted")
    assert len(_rayjobs(admin)) == 1 and _versions(sessions) == versions_before


def test_a_decision_rolls_a_canary_back(
    admin: client.ApiClient, operator: Operator, store: Any
) -> None:
    sessions = store[1]
    stable = _pins(admin)["stable"]
    job_name = _start_run(admin, "roll-me-back")["rayJob"]
    candidate = _finish_job(admin, sessions, job_name)
    _wait_phase(admin, "roll-me-back", "Canary")
    _custom(admin).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "retrainruns", "roll-me-back", {"spec": {"decision": "rollback"}}
    )
    _wait_phase(admin, "roll-me-back", "RolledBack")
    pins = wait_for(lambda: (p := _pins(admin)).get("canary") is None and p, what="rollback")
    assert pins["stable"] == stable and candidate not in pins.values()


def test_deleting_a_run_mid_canary_runs_its_finalizer(
    admin: client.ApiClient, operator: Operator, store: Any
) -> None:
    sessions = store[1]
    job_name = _start_run(admin, "delete-me")["rayJob"]
    candidate = _finish_job(admin, sessions, job_name)
    _wait_phase(admin, "delete-me", "Canary")
    wait_for(lambda: _pins(admin).get("canary") == candidate, what="the canary pinned")
    custom = _custom(admin)
    body = custom.get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "retrainruns", "delete-me"
    )
    assert "kizuna.ai/rollout" in body["metadata"]["finalizers"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "retrainruns", "delete-me")

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "retrainruns", "delete-me"
            )
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, what="the finalizer to let the RetrainRun go")
    assert _pins(admin).get("canary") is None  # the canary was withdrawn first
    # Its RayJob goes with it: the garbage collector follows the owner reference.
    wait_for(
        lambda: job_name not in {j["metadata"]["name"] for j in _rayjobs(admin)},
        what="the RayJob to be collected",
    )


def _outside_the_roles(identity: client.ApiClient) -> list[Callable[[], object]]:
    """Calls neither the operator's nor the dashboard's code makes."""
    return [
        lambda: client.CoreV1Api(identity).list_namespaced_secret(NAMESPACE),
        lambda: client.AppsV1Api(identity).delete_namespaced_deployment(
            "kizuna-kizuna-operator", NAMESPACE
        ),
        lambda: client.CustomObjectsApi(identity).delete_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "personalities", "tsundere"
        ),
    ]


def test_a_call_outside_the_roles_is_refused(
    cluster: Any, admin: client.ApiClient, release: dict[str, str], tmp_path: Path
) -> None:
    # What the roles allow is proven by the stories: the operator logged no refusal.
    for account in ("kizuna-kizuna-operator", "kizuna-kizuna-dashboard"):
        identity = api_client(_service_account_kubeconfig(cluster, admin, account, tmp_path))
        for call in _outside_the_roles(identity):
            with pytest.raises(ApiException) as refusal:
                call()
            assert refusal.value.status == 403, account


def test_the_dashboards_kubernetes_backend_works_with_its_own_role(
    cluster: Any,
    admin: client.ApiClient,
    release: dict[str, str],
    operator: Operator,
    store: Any,
    tmp_path: Path,
) -> None:
    kubeconfig = _service_account_kubeconfig(cluster, admin, "kizuna-kizuna-dashboard", tmp_path)
    backend = KubernetesOps(
        Settings(kubernetes_namespace=NAMESPACE, data_dir=tmp_path),
        store[1],
        api=client.CustomObjectsApi(api_client(kubeconfig)),
    )
    backend.retrain("tsundere", {"trainer": {"steps": 8}}, name="from-the-dashboard")
    created = _custom(admin).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "retrainruns", "from-the-dashboard"
    )
    assert created["spec"]["persona"] == "tsundere" and created["spec"]["trainer"]["steps"] == 8
    backend.decide("from-the-dashboard", "rollback")
    backend.pause("tsundere", True)
    personality = _custom(admin).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "personalities", "tsundere"
    )
    assert personality["spec"]["paused"] is True
    backend.pause("tsundere", False)
    assert "from-the-dashboard" in {view.name for view in backend.rollouts()}

"""The kopf handlers, called as kopf calls them: realistic bodies (the chart's examples),
a recording Kubernetes client and a real store. No cluster exists on these machines."""

from __future__ import annotations

import copy
import logging
import uuid
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from sqlalchemy.orm import Session, sessionmaker

from kizuna.rollout.resources import RetrainRunSpec
from kizuna.store import adapters
from kizuna.store.db import make_engine, session_factory, transaction
from kizuna_operator import handlers
from kizuna_operator.cluster import PERSONALITIES, RAY, Resource
from kizuna_operator.objects import JobTemplate, job_observation, ray_job
from kizuna_operator.permissions import CLIENT, Permission
from support import log_served, register_retrain_result, register_stable_tsundere

EXAMPLES = Path(__file__).resolve().parents[2] / "charts" / "kizuna" / "examples"
NAMESPACE = "kizuna"
TEMPLATE = JobTemplate.model_validate(
    {
        "image": "ghcr.io/kizuna-ai/kizuna:0.1.0",
        "settingsConfigMap": "kizuna-settings",
        "databaseSecret": "kizuna-database",
        "serviceAccount": "kizuna-retrain",
        "headResources": {"requests": {"cpu": "2", "memory": "8Gi"}},
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
    }
)


class RecordingCluster:
    """An in-memory API server that records every call as the permission it needs."""

    def __init__(self) -> None:
        self.objects: dict[tuple[Resource, str, str], dict[str, Any]] = {}
        self.calls: list[Permission] = []

    def _record(self, resource: Resource, verb: str) -> None:
        self.calls.append(Permission(resource[0], resource[2], verb))

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        self._record(resource, "get")
        found = self.objects.get((resource, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> bool:
        self._record(resource, "create")
        key = (resource, namespace, body["metadata"]["name"])
        if key in self.objects:
            return False
        self.objects[key] = copy.deepcopy(body)
        return True

    def patch(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> None:
        self._record(resource, "patch")
        merge(self.objects[(resource, namespace, name)], body)


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386), as the API server applies it."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    body["metadata"] |= {"namespace": NAMESPACE, "uid": str(uuid.uuid4())}
    return body


@pytest.fixture
def memo(sessions: sessionmaker[Session]) -> kopf.Memo:
    register_stable_tsundere(sessions)
    cluster = RecordingCluster()
    personality = example("personality-tsundere.yaml")
    personality["spec"]["gates"]["minCanaryRequests"] = 3
    cluster.objects[(PERSONALITIES, NAMESPACE, "tsundere")] = personality
    return kopf.Memo(cluster=cluster, sessions=sessions, template=TEMPLATE)


def reconcile(memo: kopf.Memo, run: dict[str, Any]) -> dict[str, Any]:
    """Call the timer handler as kopf does and apply its status patch to the body."""
    patch = kopf.Patch()
    handlers.reconcile_run(
        spec=run["spec"],
        status=run.get("status", {}),
        name=run["metadata"]["name"],
        namespace=NAMESPACE,
        body=kopf.Body(run),
        memo=memo,
        patch=patch,
        logger=logging.getLogger("test"),
    )
    run.setdefault("status", {}).update(patch.get("status", {}))
    return patch


def finish_job(memo: kopf.Memo, run: dict[str, Any], *, succeeded: bool) -> None:
    """What KubeRay and the job itself would do: register a candidate, mark the RayJob."""
    job_name = run["status"]["rayJob"]
    register_retrain_result(memo.sessions, job_name=job_name, succeeded=succeeded)
    job = memo.cluster.objects[(RAY, NAMESPACE, job_name)]
    job["status"] = (
        {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}
        if succeeded
        else {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "message": "OOMKilled"}
    )


def serve(memo: kopf.Memo, version: int, n: int) -> None:
    log_served(memo.sessions, version=version, n=n)


def serving(memo: kopf.Memo) -> tuple[int, int | None, float]:
    with memo.sessions() as session:
        stable = adapters.stable_adapter(session, persona="tsundere").version
        canary = adapters.canary_adapter(session, persona="tsundere")
    return stable, canary and canary.version, canary.traffic_weight if canary else 0.0


def pins(memo: kopf.Memo) -> dict[str, Any]:
    personality = memo.cluster.objects[(PERSONALITIES, NAMESPACE, "tsundere")]
    return dict(personality["spec"]["adapters"])


def test_a_retrain_run_goes_from_rayjob_to_promotion(memo: kopf.Memo) -> None:
    run = example("retrainrun-tsundere.yaml")
    name = run["metadata"]["name"]
    reconcile(memo, run)
    assert run["status"]["phase"] == "Training"
    job = memo.cluster.objects[(RAY, NAMESPACE, f"{name}-retrain")]
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "RetrainRun" and owner["uid"] == run["metadata"]["uid"]
    assert f'"job_name": "{name}-retrain"' in job["spec"]["entrypoint"]
    reconcile(memo, run)  # the job runs: nothing to do
    assert run["status"]["phase"] == "Training"
    finish_job(memo, run, succeeded=True)
    for _ in range(2):
        reconcile(memo, run)
    assert run["status"]["phase"] == "Canary" and run["status"]["candidateVersion"] == 2
    assert serving(memo) == (1, 2, 0.05)
    assert pins(memo) == {"stable": 1, "canary": 2, "canaryWeight": 0.05}
    for weight in (0.25, 0.5):
        serve(memo, 2, 3)
        reconcile(memo, run)
        assert serving(memo) == (1, 2, weight)
    serve(memo, 2, 3)
    reconcile(memo, run)
    assert run["status"]["phase"] == "Promoted"
    assert run["status"]["conditions"][0]["status"] == "True"
    assert run["status"]["metrics"]["style_accuracy"] == 0.9
    assert serving(memo) == (2, None, 0.0)
    assert pins(memo) == {"stable": 2, "canaryWeight": 0.0}
    # The client calls made are exactly the grants the chart's Role gives for them.
    assert set(memo.cluster.calls) == CLIENT


def test_a_restarted_operator_repeats_nothing(memo: kopf.Memo) -> None:
    run = example("retrainrun-tsundere.yaml")
    stale = copy.deepcopy(run)
    reconcile(memo, run)
    reconcile(memo, stale)  # the status patch was lost: the same pass again
    assert len([k for k in memo.cluster.objects if k[0] == RAY]) == 1
    assert stale["status"] == {**run["status"], "conditions": stale["status"]["conditions"]}
    finish_job(memo, run, succeeded=True)
    reconcile(memo, run)
    reconcile(memo, run)
    stale = copy.deepcopy(run)
    serve(memo, 2, 3)
    reconcile(memo, run)
    reconcile(memo, stale)  # lost again, after the canary stepped
    assert stale["status"]["step"] == run["status"]["step"] == 1
    assert serving(memo) == (1, 2, 0.25)
    with memo.sessions() as session:
        assert [a.version for a in adapters.list_adapters(session)] == [1, 2]


def test_a_failed_rayjob_fails_the_run(memo: kopf.Memo) -> None:
    run = example("retrainrun-tsundere.yaml")
    reconcile(memo, run)
    finish_job(memo, run, succeeded=False)
    reconcile(memo, run)
    assert run["status"]["phase"] == "Failed"
    assert "OOMKilled" in run["status"]["message"]
    assert serving(memo) == (1, None, 0.0)


def test_deleting_a_run_mid_canary_takes_the_canary_out(memo: kopf.Memo) -> None:
    run = example("retrainrun-tsundere.yaml")
    reconcile(memo, run)
    finish_job(memo, run, succeeded=True)
    reconcile(memo, run)
    reconcile(memo, run)
    assert serving(memo) == (1, 2, 0.05)
    handlers.withdraw_canary(spec=run["spec"], status=run["status"], namespace=NAMESPACE, memo=memo)
    assert serving(memo) == (1, None, 0.0)
    assert pins(memo) == {"stable": 1, "canaryWeight": 0.0}


def test_a_personality_pins_the_registry(memo: kopf.Memo) -> None:
    with transaction(memo.sessions) as session:
        adapters.register_adapter(
            session, persona="tsundere", artifact_url="file:///v2", sha256="2" * 64
        )
    body = example("personality-tsundere.yaml")
    body["spec"]["adapters"] = {"stable": 1, "canary": 2, "canaryWeight": 0.2}
    patch = kopf.Patch()
    handlers.pin_adapters(spec=body["spec"], name="tsundere", memo=memo, patch=patch)
    assert serving(memo) == (1, 2, 0.2)
    assert patch["status"] == {
        "stable": 1,
        "canary": 2,
        "canaryWeight": 0.2,
        "observedGeneration": None,
        "conditions": [],
    }
    body["spec"]["adapters"] = {"stable": 2}  # promoted by hand
    handlers.pin_adapters(spec=body["spec"], name="tsundere", memo=memo, patch=kopf.Patch())
    assert serving(memo) == (2, None, 0.0)


def test_errors_are_temporary_or_permanent(memo: kopf.Memo, tmp_path: Path) -> None:
    run = example("retrainrun-tsundere.yaml")
    run["spec"]["persona"] = "cheerful"  # no Personality of that name yet
    with pytest.raises(kopf.TemporaryError, match="no Personality 'cheerful'"):
        reconcile(memo, run)
    run["spec"]["trainer"]["deepspeedStage"] = 3
    with pytest.raises(kopf.PermanentError, match="invalid RetrainRun"):
        reconcile(memo, run)
    down = session_factory(make_engine("postgresql+psycopg://kizuna@127.0.0.1:9/none"))
    broken = kopf.Memo(cluster=memo.cluster, sessions=down, template=TEMPLATE)
    with pytest.raises(kopf.TemporaryError, match="store unavailable"):
        reconcile(broken, example("retrainrun-tsundere.yaml"))


def test_the_rayjob_asks_for_what_the_run_needs() -> None:
    spec = RetrainRunSpec.model_validate(example("retrainrun-tsundere.yaml")["spec"])
    job = ray_job("tsundere-x-retrain", spec, TEMPLATE)
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    container = workers["template"]["spec"]["containers"][0]
    assert workers["replicas"] == 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["memory"] == "32Gi"
    assert "'" in job["spec"]["entrypoint"]  # the JSON is shell-quoted for ray job submit
    assert (
        '"strategy": "deepspeed", "use_gpu": true, "workers": 2, "zero_stage": 2'
        in (job["spec"]["entrypoint"])
    )


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ({}, "pending"),
        ({"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}, "running"),
        ({"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}, "succeeded"),
        ({"jobStatus": "STOPPED"}, "failed"),
        ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, "failed"),
    ],
)
def test_rayjob_status_is_read_as_kuberay_writes_it(status: dict[str, str], phase: str) -> None:
    observed = job_observation({"status": status})
    assert observed is not None and observed.phase.value == phase

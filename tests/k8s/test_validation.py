"""The API server's own validation, from the CRDs the chart installs: a malformed
Personality or RetrainRun is refused with a message naming the field."""

import copy
from typing import Any

import pytest
import yaml
from k8s_support import CHART, run
from kubernetes import client
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, NAMESPACE = "kizuna.ai", "v1alpha1", "validation"
PERSONALITY = yaml.safe_load((CHART / "examples" / "personality-tsundere.yaml").read_text())
RUN = yaml.safe_load((CHART / "examples" / "retrainrun-tsundere.yaml").read_text())


@pytest.fixture(scope="module")
def custom(cluster: Any, admin: client.ApiClient) -> client.CustomObjectsApi:
    run("kubectl", "create", "namespace", NAMESPACE, kubeconfig=cluster.kubeconfig)
    run(
        "kubectl",
        "apply",
        "--server-side",
        "-f",
        str(CHART / "crds"),
        kubeconfig=cluster.kubeconfig,
    )
    run(
        "kubectl",
        "wait",
        "--for=condition=Established",
        "crd/personalities.kizuna.ai",
        "crd/retrainruns.kizuna.ai",
        kubeconfig=cluster.kubeconfig,
    )
    return client.CustomObjectsApi(admin)


def _with(body: dict[str, Any], path: str, value: Any, name: str) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["metadata"]["name"] = name
    *parents, last = path.split(".")
    node = changed
    for part in parents:
        node = node[part]
    node[last] = value
    return changed


@pytest.mark.parametrize(
    ("plural", "body", "field"),
    [
        (
            "personalities",
            _with(PERSONALITY, "spec.gates.minStyleAccuracy", 1.5, "p1"),
            "spec.gates.minStyleAccuracy",
        ),
        (
            "personalities",
            _with(PERSONALITY, "spec.adapters.stable", "one", "p2"),
            "spec.adapters.stable",
        ),
        ("personalities", _with(PERSONALITY, "spec.profile", "", "p3"), "spec.profile"),
        (
            "retrainruns",
            _with(RUN, "spec.trainer.deepspeedStage", 3, "r1"),
            "spec.trainer.deepspeedStage",
        ),
        (
            "retrainruns",
            _with(RUN, "spec.trainer.memoryPerWorker", "lots", "r2"),
            "spec.trainer.memoryPerWorker",
        ),
        ("retrainruns", _with(RUN, "spec.decision", "maybe", "r3"), "spec.decision"),
    ],
    ids=lambda value: value if isinstance(value, str) and "." in value else None,
)
def test_malformed_objects_are_refused_naming_the_field(
    custom: client.CustomObjectsApi, plural: str, body: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, body)
    assert refused.value.status == 422
    assert field in str(refused.value.body), refused.value.body


def test_the_shipped_examples_are_accepted(custom: client.CustomObjectsApi) -> None:
    for plural, body in (("personalities", PERSONALITY), ("retrainruns", RUN)):
        created = custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, body)
        assert created["spec"]["persona" if plural == "retrainruns" else "profile"] == "tsundere"

"""The Helm chart, rendered by the real helm binary that `make chart` fetches, and every
rendered object validated: core kinds against Kubernetes' OpenAPI schemas
(kubernetes-validate, strict), our custom resources against the CRDs generated from
their pydantic models, KubeRay's pod templates as core PodTemplates, and the operator's
RBAC against the permissions its code declares."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kizuna.config import Settings
from kizuna.rollout import crds
from kizuna.rollout.backends import KUBERNETES_GRANTS
from kizuna.rollout.resources import RetrainRunSpec
from kizuna_operator.objects import JobTemplate, ray_job
from kizuna_operator.permissions import CLUSTER, NAMESPACED, Permission

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kizuna"
HELM = REPO / ".tools" / "bin" / "helm"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
# The oldest and newest Kubernetes minor versions the chart is checked against.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


@pytest.fixture(scope="module")
def helm() -> Path:
    if not HELM.is_file():
        if os.environ.get("CI"):
            pytest.fail("helm is missing; `make chart` fetches it")
        pytest.skip("helm is missing; run `make chart`")
    return HELM


def render(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", "kizuna", str(CHART), "--namespace", "kizuna", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def rendered(helm: Path, values: Path) -> list[dict[str, Any]]:
    result = render(helm, "--include-crds", "-f", str(values))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI v3's ``nullable`` as JSON Schema (draft 4 shares its boolean exclusives)."""
    if isinstance(node, list):
        return [nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {k: nullable_to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        result = {"anyOf": [result, {"type": "null"}]}
    return result


def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    schema = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(nullable_to_json_schema(schema))


def validate_pod_template(template: dict[str, Any], version: str) -> None:
    """A KubeRay pod template is a core PodTemplateSpec: validate it as a PodTemplate."""
    body = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "check"},
        "template": template,
    }
    kubernetes_validate.validate(body, version, strict=True)


def validate_ray(obj: dict[str, Any], version: str) -> None:
    cluster = obj["spec"].get("rayClusterConfig") or obj["spec"]["rayClusterSpec"]
    validate_pod_template(cluster["headGroupSpec"]["template"], version)
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        validate_pod_template(group["template"], version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_every_rendered_object_is_valid(helm: Path, values: Path, version: str) -> None:
    kinds = set()
    for obj in rendered(helm, values):
        kinds.add(obj["kind"])
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        if group == "kizuna.ai":
            crd_validator(obj["kind"]).validate(obj)
        elif group == "ray.io":
            validate_ray(obj, version)
        else:
            kubernetes_validate.validate(obj, version, strict=True)
    assert {"CustomResourceDefinition", "Deployment", "RayService", "Role"} <= kinds


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_the_operator_may_do_exactly_what_its_code_does(helm: Path, values: Path) -> None:
    granted: dict[str, set[Permission]] = {"Role": set(), "ClusterRole": set()}
    for obj in rendered(helm, values):
        if obj["kind"] in granted and obj["metadata"]["name"].endswith("-operator"):
            for rule in obj["rules"]:
                granted[obj["kind"]] |= {
                    Permission(group, resource, verb)
                    for group in rule["apiGroups"]
                    for resource in rule["resources"]
                    for verb in rule["verbs"]
                }
    assert granted["Role"] == NAMESPACED
    assert granted["ClusterRole"] == CLUSTER


def test_the_dashboard_may_do_exactly_what_its_backend_does(helm: Path) -> None:
    objects = rendered(helm, CHART / "ci" / "gpu-cluster-values.yaml")
    role = next(
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-dashboard")
    )
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == KUBERNETES_GRANTS


def test_the_chart_ships_the_crds_the_models_define() -> None:
    for kind, (plural, *_) in crds.KINDS.items():
        shipped = yaml.safe_load((CHART / "crds" / f"{plural}.kizuna.ai.yaml").read_text())
        assert shipped == crds.crd(kind), "run `python -m kizuna.rollout.crds charts/kizuna/crds`"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_the_examples_are_valid_custom_resources(example: Path) -> None:
    body = yaml.safe_load(example.read_text())
    crd_validator(body["kind"]).validate(body)


@pytest.mark.parametrize(
    "change",
    [
        {"trainer": {"deepspeedStage": 3}},
        {"trainer": {"workers": 0}},
        {"persona": ""},
        {"decision": "sideways"},
    ],
)
def test_the_crd_refuses_what_the_model_refuses(change: dict[str, Any]) -> None:
    body = yaml.safe_load((CHART / "examples" / "retrainrun-tsundere.yaml").read_text())
    spec = copy.deepcopy(body["spec"])
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("RetrainRun").validate({**body, "spec": spec})
    with pytest.raises(ValueError):
        RetrainRunSpec.model_validate(spec)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_operators_rayjob_is_valid(helm: Path, version: str) -> None:
    values = CHART / "ci" / "gpu-cluster-values.yaml"
    configmap = next(
        o for o in rendered(helm, values) if o["metadata"]["name"].endswith("rayjob-template")
    )
    template = JobTemplate.model_validate(yaml.safe_load(configmap["data"]["rayjob.yaml"]))
    body = yaml.safe_load((CHART / "examples" / "retrainrun-tsundere.yaml").read_text())
    job = ray_job("tsundere-1-retrain", RetrainRunSpec.model_validate(body["spec"]), template)
    validate_ray(job, version)
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "tolerations"
    ] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_the_rendered_settings_file_loads(
    helm: Path, values: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objects = rendered(helm, values)
    configmap = next(o for o in objects if o["metadata"]["name"].endswith("-settings"))
    config = tmp_path / "kizuna.yaml"
    config.write_text(configmap["data"]["kizuna.yaml"])
    monkeypatch.setenv("KIZUNA_CONFIG", str(config))
    settings = Settings()
    expected = yaml.safe_load(values.read_text())["settings"]
    assert settings.base_model == expected["baseModel"]
    assert settings.resolved_artifact_url == expected["artifactUrl"]


def test_generated_secrets_survive_upgrades_and_data_is_kept(helm: Path) -> None:
    objects = rendered(helm, CHART / "ci" / "minimal-values.yaml")
    by_name = {o["metadata"]["name"]: o for o in objects}
    assert "lookup" in (CHART / "templates" / "auth-secret.yaml").read_text()
    keep = by_name["kizuna-kizuna-artifacts"]["metadata"]["annotations"]
    assert keep["helm.sh/resource-policy"] == "keep"
    selectors = [
        o["spec"]["selector"]["matchLabels"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    ]
    assert selectors and all("helm.sh/chart" not in s for s in selectors)


@pytest.mark.parametrize(
    "override",
    [
        "settings.device=tpu",
        "settings.artifactUrl=not-a-url",
        "image.pullPolicy=Sometimes",
        "surprise=1",
        "serve.workers.gpus=-1",
        "federation.serviceType=Ingress",
        "postgresql.storageSize=lots",
    ],
)
def test_the_schema_refuses_bad_values(helm: Path, override: str) -> None:
    result = render(helm, "--set", override)
    assert result.returncode != 0
    assert "schema" in result.stderr.lower()

"""Kubernetes objects the operator creates, built by pure functions (no cluster needed).

The RayJob of a retrain runs ``python -m kizuna_jobs.retrain`` on a RayCluster that
KubeRay creates for it and deletes when the job ends. What differs per install (image,
pod resources, node selectors, the settings ConfigMap and database Secret) comes from
the chart's job template (:class:`JobTemplate`); what differs per run from the run.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from kizuna.rollout.resources import RetrainRunSpec
from kizuna.rollout.state import JobObservation, JobPhase

APP_LABEL = "app.kubernetes.io/name"


class JobTemplate(BaseModel):
    """The install's part of every retrain RayJob (rendered by the chart)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    image: str
    image_pull_policy: str = Field(default="IfNotPresent", alias="imagePullPolicy")
    service_account: str | None = Field(default=None, alias="serviceAccount")
    settings_config_map: str = Field(alias="settingsConfigMap")
    database_secret: str = Field(alias="databaseSecret")
    database_key: str = Field(default="url", alias="databaseKey")
    head_resources: dict[str, Any] = Field(default_factory=dict, alias="headResources")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list, alias="volumeMounts")
    active_deadline_seconds: int = Field(default=21600, alias="activeDeadlineSeconds")
    ttl_seconds_after_finished: int = Field(default=3600, alias="ttlSecondsAfterFinished")

    @classmethod
    def load(cls, path: Path) -> JobTemplate:
        """The template file the chart mounts."""
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def _container(template: JobTemplate, name: str, resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "env": [
            {"name": "KIZUNA_CONFIG", "value": "/etc/kizuna/kizuna.yaml"},
            {
                "name": "KIZUNA_DATABASE_URL",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": template.database_secret,
                        "key": template.database_key,
                    }
                },
            },
        ],
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "settings", "mountPath": "/etc/kizuna", "readOnly": True},
            *template.volume_mounts,
        ],
    }


def _pod(template: JobTemplate, name: str, resources: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [_container(template, name, resources)],
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            {"name": "settings", "configMap": {"name": template.settings_config_map}},
            *template.volumes,
        ],
    }
    if template.service_account:
        spec["serviceAccountName"] = template.service_account
    if template.node_selector:
        spec["nodeSelector"] = template.node_selector
    if template.tolerations:
        spec["tolerations"] = template.tolerations
    return {"metadata": {"labels": {APP_LABEL: "kizuna", "kizuna.ai/role": name}}, "spec": spec}


def worker_resources(spec: RetrainRunSpec) -> dict[str, Any]:
    """Requests and limits of one training worker's pod."""
    trainer = spec.trainer
    memory = trainer.memory_per_worker
    requests: dict[str, Any] = {"cpu": str(trainer.cpus_per_worker), "memory": memory}
    limits: dict[str, Any] = {"memory": memory}
    if trainer.gpus_per_worker:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = trainer.gpus_per_worker
    return {"requests": requests, "limits": limits}


def ray_job(name: str, spec: RetrainRunSpec, template: JobTemplate) -> dict[str, Any]:
    """The RayJob that runs the retrain job ``name`` for ``spec``."""
    config = {**spec.job_config(), "persona": spec.persona, "job_name": name}
    workers = spec.trainer.workers
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "labels": {APP_LABEL: "kizuna", "kizuna.ai/persona": spec.persona},
        },
        "spec": {
            "entrypoint": "python -m kizuna_jobs.retrain --config-json "
            + shlex.quote(json.dumps(config, sort_keys=True)),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": template.ttl_seconds_after_finished,
            "activeDeadlineSeconds": template.active_deadline_seconds,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": {
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},  # the head schedules; workers train
                    "template": _pod(template, "ray-head", template.head_resources),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "trainers",
                        "replicas": workers,
                        "minReplicas": workers,
                        "maxReplicas": workers,
                        "rayStartParams": {},
                        "template": _pod(template, "ray-worker", worker_resources(spec)),
                    }
                ],
            },
        },
    }


_JOB_STATUS = {
    "SUCCEEDED": JobPhase.SUCCEEDED,
    "FAILED": JobPhase.FAILED,
    "STOPPED": JobPhase.FAILED,
    "RUNNING": JobPhase.RUNNING,
}


def job_observation(ray_job_object: dict[str, Any] | None) -> JobObservation | None:
    """How a RayJob stands, from its status (KubeRay's jobStatus and deployment status)."""
    if ray_job_object is None:
        return None
    status = ray_job_object.get("status") or {}
    message = str(status.get("message") or status.get("reason") or "")
    if status.get("jobDeploymentStatus") == "Failed":
        return JobObservation(JobPhase.FAILED, message=message or "the RayJob failed")
    phase = _JOB_STATUS.get(str(status.get("jobStatus") or ""), JobPhase.PENDING)
    return JobObservation(phase, message=message)

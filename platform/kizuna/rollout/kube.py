"""The Kubernetes API client, configured in-cluster or from a kubeconfig."""

from __future__ import annotations

from kubernetes import client, config


def custom_objects_api() -> client.CustomObjectsApi:
    """A client for custom resources: the pod's service account, else ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.CustomObjectsApi()

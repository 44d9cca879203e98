"""The few Kubernetes calls the operator's handlers make, behind a small protocol.

Handlers take a :class:`Cluster`, so tests hand them a recording one; in the operator
it is :class:`KubernetesCluster` over the official client. Each method's permission is
listed in ``permissions.CLIENT``.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from kubernetes.client.exceptions import ApiException

from kizuna.rollout.kube import custom_objects_api
from kizuna.rollout.resources import GROUP, VERSION

Resource = tuple[str, str, str]  # group, version, plural
RAY: Resource = ("ray.io", "v1", "rayjobs")
PERSONALITIES: Resource = (GROUP, VERSION, "personalities")


class Cluster(Protocol):
    """Reading and writing the custom objects the handlers touch."""

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        ...

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> bool:
        """Create ``body``; False when it exists already (creating is idempotent)."""
        ...

    def patch(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Merge-patch the object."""
        ...


class KubernetesCluster:
    """:class:`Cluster` on the official client, in-cluster or from a kubeconfig."""

    def __init__(self) -> None:
        self._api = custom_objects_api()

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None on 404."""
        group, version, plural = resource
        try:
            found = cast(
                dict[str, Any],
                self._api.get_namespaced_custom_object(group, version, namespace, plural, name),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> bool:
        """Create; False on 409 (it exists)."""
        group, version, plural = resource
        try:
            self._api.create_namespaced_custom_object(group, version, namespace, plural, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def patch(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Merge-patch."""
        group, version, plural = resource
        self._api.patch_namespaced_custom_object(group, version, namespace, plural, name, body)

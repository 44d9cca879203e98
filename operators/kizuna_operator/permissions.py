"""Every Kubernetes permission the operator needs, declared next to the code that uses it.

The chart's Role and ClusterRole are checked against :data:`REQUIRED` (a test renders
them), and the handler tests check that the calls the handlers make are exactly
:data:`CLIENT` — so the operator's RBAC allows what its code does and nothing more.
"""

from __future__ import annotations

from typing import NamedTuple


class Permission(NamedTuple):
    """One RBAC grant: API group ("" is core), resource (with subresource), verb."""

    group: str
    resource: str
    verb: str


def grants(group: str, resource: str, *verbs: str) -> set[Permission]:
    """The permissions of ``verbs`` on one resource."""
    return {Permission(group, resource, verb) for verb in verbs}


#: What our own client code calls (see ``cluster.KubernetesCluster``).
CLIENT = grants("ray.io", "rayjobs", "get", "create") | grants(
    "kizuna.ai", "personalities", "get", "patch"
)

#: What kopf itself does for the handlers registered in ``handlers.py``: watch the
#: resources, patch their status and its progress annotations, post events.
FRAMEWORK = (
    grants("kizuna.ai", "personalities", "list", "watch", "patch")
    | grants("kizuna.ai", "personalities/status", "patch")
    | grants("kizuna.ai", "retrainruns", "list", "watch", "patch")
    | grants("kizuna.ai", "retrainruns/status", "patch")
    | grants("", "events", "create")
)

#: Cluster-scoped: kopf scans the CRDs it serves, and watches namespaces even when it
#: serves one (without the grant it retries nine times, logging each refusal, before it
#: falls back to the name it was given; found against a real API server).
CLUSTER = grants("apiextensions.k8s.io", "customresourcedefinitions", "list", "watch") | grants(
    "", "namespaces", "list", "watch"
)

#: Namespaced grants (the Role in the operator's namespace).
NAMESPACED = CLIENT | FRAMEWORK
REQUIRED = NAMESPACED | CLUSTER

"""Where operators' actions go: the embedded backend, or a cluster's custom resources.

The dashboard (and anything else that acts for a person) talks to an :class:`OpsBackend`
chosen by the ``rollout_backend`` setting from :data:`BACKENDS`. ``local`` records
rollouts in the store and drives them in-process; ``kubernetes`` creates and patches
``RetrainRun`` and ``Personality`` resources for the operator to reconcile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from sqlalchemy.orm import Session, sessionmaker

from kizuna.config import Settings
from kizuna.rollout.kube import custom_objects_api
from kizuna.rollout.local import LocalBackend, default_gates
from kizuna.rollout.resources import GROUP, VERSION, RetrainRunSpec
from kizuna.rollout.spec import Decision, RolloutSpec
from kizuna.rollout.state import Phase, RolloutState
from kizuna.store import rollouts as rollout_store
from kizuna.store.models import Rollout


@dataclass(frozen=True)
class RolloutView:
    """One rollout as an operator sees it."""

    name: str
    persona: str
    phase: str
    candidate: int | None
    weight: float
    message: str
    paused: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """Not yet in a final phase."""
        return not Phase(self.phase).final


class OpsBackend(Protocol):
    """The actions the dashboard offers."""

    def retrain(self, persona: str, job: dict[str, Any], *, name: str) -> None:
        """Retrain ``persona`` (job settings ``job``) and roll the candidate out."""
        ...

    def start_canary(self, persona: str, candidate: int, *, name: str, override: bool) -> None:
        """Roll out an existing candidate; ``override`` skips failing offline gates."""
        ...

    def decide(self, name: str, decision: Decision) -> None:
        """Promote or roll back a running canary now."""
        ...

    def pause(self, persona: str, paused: bool) -> None:
        """Stop (or resume) every rollout of ``persona``."""
        ...

    def rollouts(self) -> list[RolloutView]:
        """Every rollout, newest first."""
        ...


def rollout_name(persona: str, kind: str) -> str:
    """A unique, DNS-safe rollout name."""
    return f"{persona}-{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


class LocalOps:
    """Actions on the embedded backend; :meth:`drive` moves every running rollout."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.backend = LocalBackend(settings, sessions)

    def retrain(self, persona: str, job: dict[str, Any], *, name: str) -> None:
        """Record a rollout that retrains first."""
        gates = default_gates(self.settings, persona)
        self.backend.start(RolloutSpec(name=name, persona=persona, retrain=job, gates=gates))

    def start_canary(self, persona: str, candidate: int, *, name: str, override: bool) -> None:
        """Record a rollout of an existing candidate."""
        gates = default_gates(self.settings, persona)
        spec = RolloutSpec(
            name=name, persona=persona, candidate=candidate, gates=gates, override_gates=override
        )
        self.backend.start(spec)

    def decide(self, name: str, decision: Decision) -> None:
        """Set the decision and act on it at once."""
        self.backend.decide(name, {"decision": decision, "paused": False})
        self.backend.step(name)

    def pause(self, persona: str, paused: bool) -> None:
        """Pause or resume the persona's running rollouts."""
        for view in self.rollouts():
            if view.persona == persona and view.running:
                self.backend.decide(view.name, {"paused": paused})

    def rollouts(self) -> list[RolloutView]:
        """From the store."""
        with self.backend.sessions() as session:
            return [local_view(row) for row in rollout_store.list_rollouts(session)]

    def drive(self) -> None:
        """One pass over every running, unpaused rollout (errors are the rollout's own)."""
        for view in self.rollouts():
            if view.running and not view.paused:
                self.backend.step(view.name)


def local_view(row: Rollout) -> RolloutView:
    """A rollout row of the store as an operator sees it."""
    state = RolloutState.model_validate(row.state)
    return RolloutView(
        name=row.name,
        persona=row.persona,
        phase=state.phase.value,
        candidate=state.candidate,
        weight=state.weight,
        message=state.message,
        paused=bool(row.spec.get("paused")),
        events=list(row.events),
    )


#: What :class:`KubernetesOps` calls, as (API group, resource, verb): the chart grants
#: the dashboard exactly these (a test compares).
KUBERNETES_GRANTS = {
    (GROUP, "retrainruns", "create"),
    (GROUP, "retrainruns", "patch"),
    (GROUP, "retrainruns", "list"),
    (GROUP, "personalities", "patch"),
}


class KubernetesOps:
    """Actions as custom resources in ``kubernetes_namespace``; the operator acts on them."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], api: Any = None
    ) -> None:
        self.api = api if api is not None else custom_objects_api()
        self.namespace = settings.kubernetes_namespace

    def _create_run(self, name: str, spec: RetrainRunSpec) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RetrainRun",
            "metadata": {"name": name},
            "spec": spec.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        }
        self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "retrainruns", body
        )

    def retrain(self, persona: str, job: dict[str, Any], *, name: str) -> None:
        """Create a RetrainRun (``job`` holds its dataSources/trainer fields)."""
        self._create_run(name, RetrainRunSpec.model_validate({"persona": persona, **job}))

    def start_canary(self, persona: str, candidate: int, *, name: str, override: bool) -> None:
        """Create a RetrainRun of an existing candidate."""
        if override:
            raise ValueError("in a cluster, gates are the Personality's: edit them there")
        self._create_run(name, RetrainRunSpec(persona=persona, candidate=candidate))

    def decide(self, name: str, decision: Decision) -> None:
        """Patch the RetrainRun's decision."""
        patch = {"spec": {"decision": decision, "paused": False}}
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "retrainruns", name, patch
        )

    def pause(self, persona: str, paused: bool) -> None:
        """Patch the Personality's ``paused``."""
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "personalities", persona, {"spec": {"paused": paused}}
        )

    def rollouts(self) -> list[RolloutView]:
        """From the RetrainRuns' statuses."""
        listed = cast(
            dict[str, Any],
            self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "retrainruns"),
        )
        views = []
        for item in sorted(
            listed.get("items", []),
            key=lambda i: str(i["metadata"].get("creationTimestamp", "")),
            reverse=True,
        ):
            status, spec = item.get("status") or {}, item["spec"]
            views.append(
                RolloutView(
                    name=item["metadata"]["name"],
                    persona=spec["persona"],
                    phase=status.get("phase", Phase.PENDING.value),
                    candidate=status.get("candidateVersion"),
                    weight=float(status.get("canaryWeight", 0.0)),
                    message=status.get("message", ""),
                    paused=bool(spec.get("paused")),
                )
            )
        return views


#: The backends by the name the ``rollout_backend`` setting uses.
BACKENDS: dict[str, Callable[[Settings, sessionmaker[Session]], OpsBackend]] = {
    "local": LocalOps,
    "kubernetes": KubernetesOps,
}

"""kopf handlers: Personality resources pin the registry, RetrainRuns roll candidates out.

Run with ``kopf run --standalone --namespace NS -m kizuna_operator.handlers``. Each
handler is small and takes what it needs from kopf's keyword arguments; the rollout
decisions are :func:`kizuna.rollout.reconcile.reconcile`, shared with the embedded
backend. Handlers get their Kubernetes client, store and job template from ``memo``
(set at startup), so tests call them with a recording client and a real store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from kizuna.config import Settings
from kizuna.rollout.actions import Action, CreateJob, Promote, RollBack, SetCanary, describe
from kizuna.rollout.driver import step
from kizuna.rollout.effects import move_traffic
from kizuna.rollout.observe import observe, retrain_run
from kizuna.rollout.resources import (
    GROUP,
    VERSION,
    PersonalitySpec,
    RetrainRunSpec,
)
from kizuna.rollout.spec import RolloutSpec
from kizuna.rollout.state import JobObservation, JobPhase, Phase
from kizuna.store.db import open_store, transaction
from kizuna.store.models import utcnow
from kizuna_operator.cluster import PERSONALITIES, RAY, Cluster, KubernetesCluster
from kizuna_operator.objects import JobTemplate, job_observation, ray_job
from kizuna_operator.registry import apply_adapters, serving
from kizuna_operator.status import state_from_status, status_from_state

INTERVAL_S = float(os.environ.get("KIZUNA_OPERATOR_INTERVAL_S", "15"))
JOB_TEMPLATE = Path(
    os.environ.get("KIZUNA_OPERATOR_JOB_TEMPLATE", "/etc/kizuna-operator/rayjob.yaml")
)
STORE_RETRY_S = 30.0
M = TypeVar("M", bound=BaseModel)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Connect to the cluster and the store once; handlers find them in ``memo``."""
    settings.persistence.finalizer = f"{GROUP}/rollout"
    settings.posting.level = logging.INFO
    memo.cluster = KubernetesCluster()
    memo.sessions = open_store(Settings().resolved_database_url)
    memo.template = JobTemplate.load(JOB_TEMPLATE)


@contextmanager
def _store(memo: kopf.Memo) -> Iterator[Session]:
    try:
        with transaction(memo.sessions) as session:
            yield session
    except OperationalError as exc:  # the database is down or restarting: try again
        raise kopf.TemporaryError(f"store unavailable: {exc.orig}", delay=STORE_RETRY_S) from exc


def _valid(model: type[M], spec: Any, what: str) -> M:
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        raise kopf.PermanentError(f"invalid {what}: {exc.errors()[0]['msg']}") from exc


@kopf.on.resume(GROUP, VERSION, "personalities")
@kopf.on.create(GROUP, VERSION, "personalities")
@kopf.on.update(GROUP, VERSION, "personalities", field="spec.adapters")
def pin_adapters(spec: kopf.Spec, name: str, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    """Make the registry serve the versions the Personality names; report what serves."""
    personality = _valid(PersonalitySpec, spec, f"Personality {name}")
    with _store(memo) as session:
        apply_adapters(session, personality.profile, personality.adapters)
        patch.status.update(serving(session, personality.profile).model_dump(by_alias=True))


@kopf.timer(GROUP, VERSION, "personalities", interval=INTERVAL_S * 2)
def report_serving(spec: kopf.Spec, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    """Keep the Personality's status equal to the registry (a rollout moves it)."""
    with _store(memo) as session:
        status = serving(session, str(spec["profile"])).model_dump(by_alias=True)
    patch.status.update(status)


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return Phase(status.get("phase", Phase.PENDING.value)).final is False


@kopf.timer(GROUP, VERSION, "retrainruns", interval=INTERVAL_S, when=_unfinished)
def reconcile_run(
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """One reconcile pass of a RetrainRun: observe, decide, act, record in its status."""
    assert namespace is not None  # RetrainRun is namespaced
    run = _valid(RetrainRunSpec, spec, f"RetrainRun {name}")
    found = memo.cluster.get(PERSONALITIES, namespace, run.persona)
    if found is None:
        raise kopf.TemporaryError(f"no Personality {run.persona!r} in {namespace}", delay=60)
    personality = _valid(PersonalitySpec, found["spec"], f"Personality {run.persona}")
    rollout = run.rollout(name, personality)
    state = state_from_status(dict(status))
    with _store(memo) as session:
        job = _job(memo.cluster, session, namespace, rollout) if state.job else None
        world = observe(session, rollout, state, now=utcnow(), job=job)

    def effect(action: Action) -> None:
        _act(memo, namespace, body, run, action)

    def record(_: object, action: Action) -> None:
        logger.info(describe(action))  # kopf posts INFO as an event on the RetrainRun

    state, plan = step(rollout, state, world, effect=effect, save=record)
    metrics = world.candidate.metrics if world.candidate else {}
    patch.status.update(status_from_state(state, metrics=metrics))
    if plan.waiting_for:
        logger.debug(plan.waiting_for)


def _job(
    cluster: Cluster, session: Session, namespace: str, rollout: RolloutSpec
) -> JobObservation | None:
    job = job_observation(cluster.get(RAY, namespace, rollout.job_name))
    if job is None or job.phase != JobPhase.SUCCEEDED:
        return job
    recorded = retrain_run(session, job_name=rollout.job_name)
    return JobObservation(job.phase, recorded.candidate if recorded else None, job.message)


def _act(
    memo: kopf.Memo, namespace: str, owner: kopf.Body, run: RetrainRunSpec, action: Action
) -> None:
    """Take one action's effect: a RayJob, or the registry plus the Personality's pins."""
    if isinstance(action, CreateJob):
        job = ray_job(action.name, run, memo.template)
        kopf.adopt(job, owner=owner)  # deleted with its RetrainRun
        memo.cluster.create(RAY, namespace, job)
        return
    _move(memo, namespace, run.persona, action)


def _move(memo: kopf.Memo, namespace: str, persona: str, action: Action) -> None:
    with _store(memo) as session:
        if not move_traffic(session, persona, action):
            return
    # Pin the Personality to what now serves, so that its own handler keeps it there
    # (a merge patch: a key left out keeps its value, None removes it).
    match action:
        case SetCanary(version, weight, _):
            pins: dict[str, Any] = {"canary": version, "canaryWeight": weight}
        case Promote(version):
            pins = {"stable": version, "canary": None, "canaryWeight": 0.0}
        case _:  # RollBack: stable is left as it is
            pins = {"canary": None, "canaryWeight": 0.0}
    memo.cluster.patch(PERSONALITIES, namespace, persona, {"spec": {"adapters": pins}})


@kopf.on.delete(GROUP, VERSION, "retrainruns")
def withdraw_canary(
    spec: kopf.Spec, status: kopf.Status, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A RetrainRun deleted mid-canary takes its canary out of traffic (stable untouched)."""
    assert namespace is not None
    state = state_from_status(dict(status))
    if state.phase != Phase.CANARY or state.candidate is None:
        return
    withdrawn = RollBack(state.candidate, "its RetrainRun was deleted")
    _move(memo, namespace, str(spec["persona"]), withdrawn)

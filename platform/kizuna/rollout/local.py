"""The embedded rollout backend: the store is the registry, retrains are local processes.

Rollouts are rows of the store (spec, recorded state, events); :meth:`LocalBackend.step`
is one reconcile pass, and :meth:`LocalBackend.run` repeats it until the rollout ends.
A backend killed anywhere resumes from the row: effects are idempotent (see
``actions.py``) and a retrain job is found again by its name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session, sessionmaker

from kizuna.config import Settings
from kizuna.rollout.actions import Action, CreateJob, describe
from kizuna.rollout.driver import step
from kizuna.rollout.effects import move_traffic
from kizuna.rollout.observe import observe, retrain_run
from kizuna.rollout.reconcile import Plan
from kizuna.rollout.spec import Gates, RolloutSpec
from kizuna.rollout.state import JobObservation, JobPhase, RolloutState
from kizuna.store import adapters as adapter_store
from kizuna.store import rollouts as rollout_store
from kizuna.store.db import transaction
from kizuna.store.models import utcnow

Progress = Callable[[RolloutState, Plan], None]


def default_gates(settings: Settings, persona: str) -> Gates:
    """The rollout gates of ``persona`` from its evaluation thresholds in the settings."""
    thresholds = settings.gates_for(persona)
    return Gates(
        min_style_accuracy=thresholds.min_style_accuracy,
        min_content_preservation=thresholds.min_content_preservation,
        max_latency_ms=thresholds.max_latency_ms_gpu
        if settings.device == "cuda"
        else thresholds.max_latency_ms_cpu,
    )


class LocalJobs:
    """Retrain jobs as detached ``python -m kizuna_jobs.retrain`` processes, by name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def create(self, name: str, config: dict[str, Any]) -> None:
        """Start the job unless one of that name was started before (idempotent)."""
        marker = self.directory / f"{name}.json"
        if marker.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        config_file = self.directory / f"{name}.yaml"
        config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        with (self.directory / f"{name}.log").open("ab") as log:
            # A session of its own: the job outlives a backend that is stopped or killed.
            child = subprocess.Popen(
                [sys.executable, "-m", "kizuna_jobs.retrain", "--config", str(config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[name] = child
        marker.write_text(json.dumps({"pid": child.pid, "started_at": utcnow().isoformat()}))

    def observe(self, session: Session, name: str) -> JobObservation | None:
        """The job's run in the store, else whether its process still lives."""
        marker = self.directory / f"{name}.json"
        if not marker.exists():
            return None
        run = retrain_run(session, job_name=name)
        alive = self._alive(name, int(json.loads(marker.read_text())["pid"]))
        log = self.directory / f"{name}.log"
        if run is not None and (run.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED) or alive):
            return run
        if alive:
            return JobObservation(JobPhase.PENDING, message="starting")
        return JobObservation(JobPhase.FAILED, message=f"the process exited early; see {log}")

    def _alive(self, name: str, pid: int) -> bool:
        child = self._children.get(name)
        if child is not None:
            return child.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class LocalBackend:
    """Drives rollouts recorded in the store against the store and local processes."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.jobs = LocalJobs(settings.data_dir / "jobs")

    def start(self, spec: RolloutSpec) -> None:
        """Record a new rollout; :meth:`run` (or :meth:`step`) moves it."""
        with transaction(self.sessions) as session:
            if spec.candidate is not None:  # refuse an unknown version now, not mid-rollout
                adapter_store.get_adapter(session, persona=spec.persona, version=spec.candidate)
            rollout_store.create_rollout(
                session,
                name=spec.name,
                persona=spec.persona,
                spec=spec.model_dump(mode="json"),
            )

    def load(self, name: str) -> tuple[RolloutSpec, RolloutState]:
        """The rollout's spec and recorded state."""
        with self.sessions() as session:
            row = rollout_store.get_rollout(session, name=name)
            return RolloutSpec.model_validate(row.spec), RolloutState.model_validate(row.state)

    def decide(self, name: str, changes: dict[str, Any]) -> None:
        """Change the rollout's spec: pause it, or decide its canary by hand."""
        with transaction(self.sessions) as session:
            spec = rollout_store.get_rollout(session, name=name).spec
            updated = RolloutSpec.model_validate({**spec, **changes})  # refuse bad changes
            rollout_store.update_spec(session, name=name, changes=updated.model_dump(mode="json"))

    def step(self, name: str, *, now: datetime | None = None) -> tuple[RolloutState, Plan]:
        """One reconcile pass of the rollout ``name``."""
        spec, state = self.load(name)
        with self.sessions() as session:
            job = self.jobs.observe(session, spec.job_name) if state.job else None
            world = observe(session, spec, state, now=now or utcnow(), job=job)

        def save(new: RolloutState, action: Action) -> None:
            with transaction(self.sessions) as session:
                rollout_store.record_state(
                    session,
                    name=name,
                    state=new.model_dump(mode="json"),
                    event={"action": describe(action), "phase": new.phase.value},
                )

        return step(spec, state, world, effect=lambda a: self._effect(spec, a), save=save)

    def run(
        self, name: str, *, interval_s: float = 5.0, progress: Progress | None = None
    ) -> RolloutState:
        """Reconcile until the rollout reaches a final phase."""
        while True:
            state, plan = self.step(name)
            if progress is not None:
                progress(state, plan)
            if state.phase.final:
                return state
            if not plan.actions:
                time.sleep(interval_s)

    def _effect(self, spec: RolloutSpec, action: Action) -> None:
        if isinstance(action, CreateJob):
            config = {**spec.retrain, "persona": spec.persona, "job_name": action.name}
            self.jobs.create(action.name, config)
            return
        with transaction(self.sessions) as session:
            move_traffic(session, spec.persona, action)

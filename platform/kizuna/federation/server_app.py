"""Kizuna's Flower ServerApp: rounds for one persona, then a ``candidate`` adapter.

Each round sends the current LoRA weights (never data) to every connected device,
collects their clipped updates in the run's protection mode, adds Gaussian noise scaled
to the aggregation rule's sensitivity, and applies the result. Rounds, rejected updates
and ε are written to the store as they happen, the weights after each completed round
are kept beside them, and a run started again with the same ``run_id`` resumes after its
last recorded round. A round that fails is played again (``round_attempts``) before it
counts as incomplete. The final weights are published as a ``candidate`` version whose
lineage carries the privacy budget, for the retrain job to warm-start from.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import load_file
from sqlalchemy.orm import Session, sessionmaker

from kizuna.artifacts import fetch_directory, publish_directory
from kizuna.config import Settings
from kizuna.federation.client_app import INSTRUCTIONS_KEY
from kizuna.federation.config import FederationConfig
from kizuna.federation.exactness import aggregation_error, full_update
from kizuna.federation.privacy import add_noise, epsilon
from kizuna.federation.strategies.outcome import RoundOutcome
from kizuna.federation.strategies.robust import robust_round
from kizuna.federation.strategies.rules import rule_named
from kizuna.federation.strategies.secure import secure_round
from kizuna.federation.task import RoundInstructions
from kizuna.federation.updates import AdapterLayout, Arrays, save_adapter, save_arrays
from kizuna.model.quantize import load_lora_tensors
from kizuna.store import adapters as adapter_store
from kizuna.store import runs as run_store
from kizuna.store.db import open_store, transaction
from kizuna.store.models import Adapter, AdapterStatus, RunKind, RunPhase, utcnow
from kizuna.version import code_version

log = logging.getLogger(__name__)
app = ServerApp()


def aggregates_dir(settings: Settings, run_id: int) -> Path:
    """Where ``record_aggregates`` keeps each round's aggregate before noise, and where the
    weights after each completed round are kept for a resumed run."""
    return settings.data_dir / "federation" / f"run-{run_id}"


def checkpoint_path(settings: Settings, run_id: int, round_number: int) -> Path:
    """The adapter's weights after round ``round_number`` of run ``run_id``."""
    return aggregates_dir(settings, run_id) / f"weights-round-{round_number}.safetensors"


def noise_std(config: FederationConfig, participants: int) -> float:
    """Gaussian noise for one round: multiplier × clipping norm × the rule's sensitivity."""
    # SecAgg+ yields the mean of the surviving devices; robust mode uses its rule.
    rule = rule_named("fedavg" if config.mode == "secure" else config.rule)
    sensitivity = rule.sensitivity(participants, config.trim_fraction)
    return config.noise_multiplier * config.clipping_norm * sensitivity


def wait_for_devices(grid: Grid, config: FederationConfig) -> list[int]:
    """The connected devices once at least ``min_devices`` are there (or all after waiting)."""
    deadline = time.monotonic() + config.device_wait_s
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= config.min_devices or time.monotonic() > deadline:
            return node_ids
        time.sleep(0.5)


class FederatedRun:
    """One run's state: the current weights, the completed rounds, the store."""

    def __init__(
        self, config: FederationConfig, settings: Settings, sessions: sessionmaker[Session]
    ) -> None:
        self.config = config
        self.settings = settings
        self.sessions = sessions
        with transaction(sessions) as session:
            self.start = self._start_adapter(session)
            self.run_id = config.run_id or self._create_run(session)
            run_store.update_run(
                session, run_id=self.run_id, phase=RunPhase.RUNNING, message="waiting for devices"
            )
        directory = fetch_directory(
            self.start.artifact_url, sha256=self.start.sha256, cache_dir=settings.adapter_cache_dir
        )
        tensors = load_lora_tensors(directory)
        self.layout = AdapterLayout.of(tensors)
        #: What devices train and send: the B factors only, unless ``factors`` is ``both``.
        self.sent = self.layout.sent(config.factors)
        self.weights: Arrays = self.layout.arrays(tensors)
        self.adapter_config = (directory / "adapter_config.json").read_text(encoding="utf-8")
        self.completed: list[int] = []
        self.participants: list[int] = []
        #: ε spent so far at the configured δ (the accountant runs once per released round).
        self.epsilon = 0.0
        self.next_round = 1
        self._resume()

    def _resume(self) -> None:
        """Continue after the last round the store has of this run (none: start at 1)."""
        with self.sessions() as session:
            records = run_store.rounds_of(session, run_id=self.run_id)
            done = [(r.round_number, r.participants) for r in records if r.details["completed"]]
            last = records[-1].round_number if records else 0
        if not records:
            return
        self.next_round = last + 1
        if done:
            checkpoint = checkpoint_path(self.settings, self.run_id, done[-1][0])
            if not checkpoint.is_file():
                raise FileNotFoundError(f"run {self.run_id} cannot resume: {checkpoint} is gone")
            self.weights = self.layout.arrays(load_file(str(checkpoint)))
            self.completed = [number for number, _ in done]
            self.participants = [count for _, count in done]
            self.epsilon = self._spent()
        log.info("run %d resumes at round %d", self.run_id, self.next_round)

    def _start_adapter(self, session: Session) -> Adapter:
        persona, version = self.config.persona, self.config.start_version
        if version:
            return adapter_store.get_adapter(session, persona=persona, version=version)
        return adapter_store.stable_adapter(session, persona=persona)

    def _create_run(self, session: Session) -> int:
        return run_store.create_run(
            session,
            kind=RunKind.FEDERATED,
            persona=self.config.persona,
            config=self.config.model_dump(),
        ).id

    @property
    def stored_epsilon(self) -> float | None:
        """ε for JSON documents: None without noise (JSON, PostgreSQL's included, has no ∞)."""
        return None if math.isinf(self.epsilon) else self.epsilon

    def instructions(self, round_number: int) -> dict[str, Any]:
        """The round's instructions as FitIns config."""
        config = self.config
        text = RoundInstructions(
            persona=config.persona,
            run_id=self.run_id,
            round=round_number,
            steps=config.local_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            max_pairs=config.max_pairs,
            clipping_norm=config.clipping_norm,
            seed=config.seed,
            names=list(self.layout.names),
            adapter_config=self.adapter_config,
            factors=config.factors,
        ).encode()
        return {INSTRUCTIONS_KEY: text}

    def play_round(self, grid: Grid, context: Context, round_number: int) -> RoundOutcome:
        """Collect one round's updates in the configured mode."""
        node_ids = wait_for_devices(grid, self.config)
        if len(node_ids) < self.config.min_devices:
            return RoundOutcome(
                aggregate=None,
                participants=0,
                note=f"{len(node_ids)} devices connected (< min_devices {self.config.min_devices})",
            )
        instructions = self.instructions(round_number)
        if self.config.mode == "secure":
            return secure_round(
                grid,
                context,
                node_ids,
                self.weights,
                instructions,
                round_number=round_number,
                layout=self.sent,
                config=self.config,
            )
        content = compat.fitins_to_recorddict(
            FitIns(ndarrays_to_parameters(self.weights), instructions), keep_input=True
        )
        return robust_round(
            grid,
            node_ids,
            content,
            round_number=round_number,
            layout=self.sent,
            config=self.config,
        )

    def play_with_retries(self, grid: Grid, context: Context, round_number: int) -> RoundOutcome:
        """:meth:`play_round` until it yields an aggregate or ``round_attempts`` are used."""
        attempt = 1
        while True:
            try:
                outcome = self.play_round(grid, context, round_number)
            except Exception as exc:  # a device or the grid failed mid-round: play it again
                log.exception("round %d attempt %d raised", round_number, attempt)
                outcome = RoundOutcome(
                    aggregate=None, participants=0, note=f"{type(exc).__name__}: {exc}"
                )
            outcome.attempts = attempt
            if outcome.aggregate is not None or attempt == self.config.round_attempts:
                return outcome
            failure = f"round {round_number} attempt {attempt} failed ({outcome.note}); again"
            log.warning("%s", failure)
            self._progress(failure)
            attempt += 1

    def apply(self, round_number: int, outcome: RoundOutcome) -> float:
        """Noise the aggregate, add it to the weights; returns the noise std used."""
        assert outcome.aggregate is not None
        if self.config.record_aggregates:
            path = aggregates_dir(self.settings, self.run_id) / f"round-{round_number}.safetensors"
            save_arrays(path, self.sent.names, outcome.aggregate)
        std = noise_std(self.config, outcome.participants)
        noised = full_update(self.layout, self.sent, add_noise(outcome.aggregate, std=std))
        self.weights = [w + u for w, u in zip(self.weights, noised, strict=True)]
        save_arrays(
            checkpoint_path(self.settings, self.run_id, round_number),
            self.layout.names,
            self.weights,
        )
        self.completed.append(round_number)
        self.participants.append(outcome.participants)
        self.epsilon = self._spent()
        return std

    def _spent(self) -> float:
        return epsilon(
            noise_multiplier=self.config.noise_multiplier,
            rounds=len(self.completed),
            delta=self.config.delta,
        )

    def aggregation_error(self, outcome: RoundOutcome, start: Arrays) -> float | None:
        """The relative aggregation error, where the server sees the updates it averaged
        (``robust`` mode with the mean rule); None elsewhere."""
        if not outcome.updates or outcome.aggregate is None or self.config.rule != "fedavg":
            return None
        updates = [full_update(self.layout, self.sent, u) for u in outcome.updates]
        aggregate = full_update(self.layout, self.sent, outcome.aggregate)
        return aggregation_error(self.layout, start, updates, aggregate)

    def _progress(self, message: str) -> None:
        with transaction(self.sessions) as session:
            run_store.update_run(session, run_id=self.run_id, message=message)

    def record(
        self,
        round_number: int,
        outcome: RoundOutcome,
        *,
        started: datetime,
        std: float | None,
        error: float | None,
    ) -> None:
        """Write the round to the store and move the run's progress."""
        details = {
            "mode": self.config.mode,
            "rule": "secagg+ mean" if self.config.mode == "secure" else self.config.rule,
            "factors": self.config.factors,
            "completed": outcome.aggregate is not None,
            "attempts": outcome.attempts,
            "noise_std": std,
            "aggregation_error": error,
            "note": outcome.note,
            "seconds": (utcnow() - started).total_seconds(),
        }
        with transaction(self.sessions) as session:
            run_store.record_round(
                session,
                run_id=self.run_id,
                round_number=round_number,
                participants=outcome.participants,
                update_norms=outcome.update_norms,
                rejected=[asdict(r) for r in outcome.rejected],
                epsilon=self.epsilon,
                details=details,
                started_at=started,
            )
            state = "done" if outcome.aggregate is not None else f"stopped ({outcome.note})"
            budget = f"ε = {self.epsilon:.3g}"
            run_store.update_run(
                session,
                run_id=self.run_id,
                progress=round_number / self.config.rounds,
                message=f"round {round_number}/{self.config.rounds} {state}; {budget}",
                metrics={"epsilon": self.stored_epsilon, "rounds_completed": len(self.completed)},
            )
        if outcome.aggregate is not None:  # recorded: an older checkpoint is never read again
            for older in self.completed[:-1]:
                checkpoint_path(self.settings, self.run_id, older).unlink(missing_ok=True)

    def register_candidate(self) -> Adapter:
        """Publish the final weights as the persona's next ``candidate`` version."""
        config = self.config
        with tempfile.TemporaryDirectory(prefix="kizuna-federated-") as tmp:
            directory = save_adapter(
                Path(tmp),
                adapter_config=self.adapter_config,
                names=self.layout.names,
                arrays=self.weights,
            )
            published = publish_directory(
                directory, root_url=self.settings.resolved_artifact_url, persona=config.persona
            )
        lineage = {
            "source": "federated",
            "run_id": self.run_id,
            "rounds": self.completed,
            "participants": self.participants,
            "epsilon": self.stored_epsilon,
            "delta": config.delta,
            "mode": config.mode,
            "aggregation": "secagg+ mean" if config.mode == "secure" else config.rule,
            "clipping_norm": config.clipping_norm,
            "noise_multiplier": config.noise_multiplier,
            "warm_start": {"version": self.start.version, "sha256": self.start.sha256},
            "base_model": self.settings.base_model,
            "base_sha256": self.start.lineage.get("base_sha256"),
            "code_version": code_version(),
        }
        with transaction(self.sessions) as session:
            adapter = adapter_store.register_adapter(
                session,
                persona=config.persona,
                artifact_url=published.url,
                sha256=published.sha256,
                status=AdapterStatus.CANDIDATE,
                lineage=lineage,
                metrics={"epsilon": self.stored_epsilon, "delta": config.delta},
            )
            run_store.update_run(
                session,
                run_id=self.run_id,
                phase=RunPhase.SUCCEEDED,
                progress=1.0,
                message=f"registered {config.persona} v{adapter.version} (candidate); "
                f"ε = {self.epsilon:.3g} at δ = {config.delta:g}",
                metrics={"candidate_version": adapter.version},
            )
            session.expunge(adapter)
        return adapter

    def fail(self, message: str) -> None:
        """Mark the run failed."""
        with transaction(self.sessions) as session:
            run_store.update_run(
                session, run_id=self.run_id, phase=RunPhase.FAILED, message=message
            )


def run_federation(
    grid: Grid, context: Context, config: FederationConfig, settings: Settings
) -> Adapter:
    """Every round of one federated run, then the candidate it registers."""
    run = FederatedRun(config, settings, open_store(settings.resolved_database_url))
    try:
        for round_number in range(run.next_round, config.rounds + 1):
            started, start = utcnow(), run.weights
            outcome = run.play_with_retries(grid, context, round_number)
            error = run.aggregation_error(outcome, start)
            std = run.apply(round_number, outcome) if outcome.aggregate is not None else None
            run.record(round_number, outcome, started=started, std=std, error=error)
            log.info(
                "round %d: %d participants, %d rejected, %s",
                round_number,
                outcome.participants,
                len(outcome.rejected),
                outcome.note or "ok",
            )
        if not run.completed:
            raise RuntimeError("no round completed; the adapter is unchanged")
        return run.register_candidate()
    except BaseException as exc:
        run.fail(f"{type(exc).__name__}: {exc}" if str(exc) else f"stopped ({type(exc).__name__})")
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: the run config names the persona, mode and privacy settings."""
    # The ServerApp process has no logging set up; show Kizuna's round log in `flwr log`.
    kizuna_log = logging.getLogger("kizuna")
    if not kizuna_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        kizuna_log.addHandler(handler)
        kizuna_log.setLevel(logging.INFO)
    config = FederationConfig.from_run_config(context.run_config)
    adapter = run_federation(grid, context, config, Settings())
    log.info(
        "registered %s v%d: ε = %s", adapter.persona, adapter.version, adapter.lineage["epsilon"]
    )

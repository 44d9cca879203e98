"""The ``kizuna`` command.

Bad input (an unknown persona, a strength outside [0, 1], a broken profile, a corrupted
artifact, a bad setting) ends with one ``error:`` line on stderr and exit code 2, never
a traceback. Long work shows a progress bar.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from kizuna import processes
from kizuna.artifacts import ArtifactIntegrityError
from kizuna.bootstrap import BOOTSTRAP_ARGS
from kizuna.config import Settings
from kizuna.model.base import BaseModelMissingError
from kizuna.model.embedded import EmbeddedModelError
from kizuna.model.generation import SamplingParams
from kizuna.personas import ProfileError, UnknownPersonaError, load_profile
from kizuna.personas.loader import profile_files
from kizuna.personas.schema import PersonaProfile
from kizuna.rollout.commands import rollout_app
from kizuna.store.adapters import AdapterNotFoundError
from kizuna.teacher.base import TeacherUnavailableError
from kizuna.teacher.registry import DEFAULT_TEACHER, teacher_names

if TYPE_CHECKING:  # the commands import what they use when they run: a fast start
    import subprocess

    from sqlalchemy.orm import Session, sessionmaker

    from kizuna.federation.config import FederationConfig

app = typer.Typer(
    help="Kizuna: personality adapters that keep improving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
personas_app = typer.Typer(help="Personality profiles.", no_args_is_help=True)
db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
corpus_app = typer.Typer(help="The shipped neutral corpus and its parallel corpus.")
device_app = typer.Typer(help="Fleet devices for federated learning.", no_args_is_help=True)
app.add_typer(personas_app, name="personas")
app.add_typer(device_app, name="device")
app.add_typer(db_app, name="db")
app.add_typer(corpus_app, name="corpus")
app.add_typer(rollout_app, name="rollout")

out = Console()
err = Console(stderr=True, soft_wrap=True)

USER_ERRORS = (
    ValueError,
    ValidationError,
    ProfileError,
    UnknownPersonaError,
    AdapterNotFoundError,
    ArtifactIntegrityError,
    BaseModelMissingError,
    EmbeddedModelError,
    FileNotFoundError,
    LookupError,
    TeacherUnavailableError,
)

Persona = Annotated[str, typer.Option("--persona", "-p", help="Persona id, e.g. tsundere.")]
Strength = Annotated[
    float, typer.Option("--strength", "-s", min=0.0, max=1.0, help="Adapter strength in [0, 1].")
]
MaxNewTokens = Annotated[int, typer.Option(min=1, max=1024, help="Most tokens to generate.")]
Temperature = Annotated[float, typer.Option(min=0.0, max=5.0, help="0 is greedy.")]


def settings() -> Settings:
    """The settings in force for this invocation."""
    return Settings()


def _profiles(config: Settings, persona: str | None) -> dict[str, PersonaProfile]:
    """Every profile in force; an unknown ``persona`` (when given) is a user error."""
    from kizuna.personas import load_profiles
    from kizuna.personas.loader import unknown_persona

    profiles = load_profiles(config.resolved_personas_dir)
    if persona is not None and persona not in profiles:
        raise unknown_persona(persona, profiles)
    return profiles


def _bar() -> RichProgress:
    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=err,
    )


class ConsoleProgress:
    """Bootstrap's progress shown as rich progress bars, one per stage."""

    def __init__(self, progress: RichProgress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def stage(self, description: str, total: int | None = None) -> None:
        """Close the previous bar and open one for the new stage."""
        if self._task is not None:
            task = self._progress.tasks[self._task]
            self._progress.update(self._task, completed=task.total or 1, total=task.total or 1)
        self._task = self._progress.add_task(description, total=total, note="")

    def advance(self, steps: int = 1, *, note: str = "") -> None:
        """Move the current bar on."""
        if self._task is not None:
            self._progress.update(self._task, advance=steps, note=note)


@app.command()
def bootstrap(
    persona: Annotated[
        list[str] | None, typer.Option("--persona", "-p", help="Only these personas.")
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, help="Training steps, shared: each step trains every persona.")
    ] = BOOTSTRAP_ARGS.steps,
    force: Annotated[bool, typer.Option(help="Retrain adapters that already exist.")] = False,
) -> None:
    """Build the embedded base model offline and a first stable adapter per persona."""
    from kizuna.bootstrap import bootstrap as run_bootstrap

    config = settings()
    with _bar() as bar:
        report = run_bootstrap(
            config,
            progress=ConsoleProgress(bar),
            args=dataclasses.replace(BOOTSTRAP_ARGS, steps=steps),
            personas=persona,
            force=force,
        )
    table = Table("persona", "stable version", "trained now", "final loss")
    for outcome in report.adapters:
        loss = f"{outcome.final_loss:.3f}" if outcome.final_loss is not None else "-"
        table.add_row(
            outcome.persona, str(outcome.version), "yes" if outcome.trained else "no", loss
        )
    out.print(table)
    converted = "converted now" if report.base_converted else "already present"
    out.print(f"base model: {config.resolved_base_model} ({converted}); {report.seconds:.1f} s")


@app.command()
def transform(
    text: Annotated[str, typer.Argument(help="The neutral text to rewrite.")],
    persona: Persona,
    strength: Strength = 1.0,
    version: Annotated[int | None, typer.Option(help="Adapter version; default stable.")] = None,
    max_new_tokens: MaxNewTokens = 64,
    temperature: Temperature = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    server: Annotated[
        str | None, typer.Option(help="URL of a running `kizuna serve`; default: in-process.")
    ] = None,
) -> None:
    """Rewrite TEXT in a persona's voice at a strength."""
    from kizuna.transform import PersonaModel, validate_text

    config = settings()
    if server is not None:
        _transform_remote(
            config, server, text, persona, strength, max_new_tokens, temperature, seed
        )
        return
    validate_text(text, limit=config.max_input_chars)
    model = PersonaModel(config, persona=persona, version=version)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    result = model.transform(text, strength=strength, params=params)
    out.print(result.output, markup=False, highlight=False)
    err.print(
        f"[dim]{result.persona} v{result.adapter_version} · strength {result.strength:.2f} · "
        f"entropy mean {result.entropy_mean:.3f} max {result.entropy_max:.3f} · "
        f"{result.new_tokens} tokens in {result.latency_ms:.0f} ms[/dim]"
    )


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option(help="Bind address; default from settings.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port.")] = None,
    replicas: Annotated[int | None, typer.Option(min=1, help="Ray Serve replicas.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Existing Ray cluster.")] = None,
) -> None:
    """Serve every persona over HTTP with Ray Serve (local Ray by default) until Ctrl-C."""
    import signal
    import threading

    from kizuna.serve import launch
    from kizuna.serve.tokens import ensure_api_token, token_path

    overrides = {"serve_host": host, "serve_port": port, "serve_replicas": replicas}
    config = settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    config, created = ensure_api_token(config)
    if created:
        err.print(f"generated API token (kept in {token_path(config)}, mode 0600):")
        out.print(created)
    with err.status("starting Ray Serve and loading the base model…"):
        url = launch.start(config, ray_address=ray_address)
    out.print(f"Kizuna is serving at {url}  (try: curl {url}/healthz)")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        with err.status("stopping (flushing interactions)…"):
            launch.stop()


@app.command()
def chat(
    persona: Persona,
    strength: Strength = 1.0,
    max_new_tokens: MaxNewTokens = 128,
    temperature: Temperature = 0.7,
    server: Annotated[
        str | None, typer.Option(help="URL of a running `kizuna serve`; default: in-process.")
    ] = None,
) -> None:
    """Chat with a persona; an empty line, 'exit' or end of input ends the chat."""
    from kizuna.model.prompts import Message, with_system
    from kizuna.transform import PersonaModel, validate_text

    config = settings()
    history: list[Message] = []
    Reply = Callable[[list[Message], Callable[[str], None]], float]

    if server is None:
        model = PersonaModel(config, persona=persona)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)

        def local(messages: list[Message], show: Callable[[str], None]) -> float:
            result = model.reply(with_system(messages), strength=strength, params=params)
            show(result.output)
            return result.entropy_mean

        reply: Reply = local
    else:
        from kizuna.serve.client import ServerClient

        client = ServerClient(config, server)

        def remote(messages: list[Message], show: Callable[[str], None]) -> float:
            body = {
                "model": persona,
                "messages": messages,
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "strength": strength,
            }
            return float(client.stream_chat(body, show)["entropy_mean"])

        reply = remote
    pieces: list[str] = []

    def show(piece: str) -> None:  # the reply as it comes
        pieces.append(piece)
        out.print(piece, end="", markup=False, highlight=False)

    err.print(f"[dim]chatting with {persona}; empty line to quit[/dim]")
    for line in sys.stdin:
        text = line.strip()
        if not text or text.lower() in {"exit", "quit"}:
            break
        history.append(
            {"role": "user", "content": validate_text(text, limit=config.max_input_chars)}
        )
        pieces.clear()
        out.print(f"{persona}> ", end="", markup=False, highlight=False)
        entropy = reply(history, show)
        out.print()
        history.append({"role": "assistant", "content": "".join(pieces)})
        err.print(f"[dim]entropy mean {entropy:.3f}[/dim]")


def _transform_remote(
    config: Settings,
    server: str,
    text: str,
    persona: str,
    strength: float,
    max_new_tokens: int,
    temperature: float,
    seed: int | None,
) -> None:
    body = {
        "text": text,
        "persona": persona,
        "strength": strength,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    from kizuna.serve.client import ServerClient

    result = ServerClient(config, server).post("/v1/transform", body)
    out.print(result["output"], markup=False, highlight=False)
    err.print(
        f"[dim]{result['persona']} v{result['adapter_version']} · strength {strength:.2f} · "
        f"entropy mean {result['entropy_mean']:.3f} max {result['entropy_max']:.3f} · "
        f"{result['latency_ms']:.0f} ms · {result['interaction_id']}[/dim]"
    )


@app.command()
def relabel(
    budget: Annotated[int, typer.Option(min=1, help="Most interactions to label.")],
    persona: Annotated[
        str | None, typer.Option("--persona", "-p", help="Only this persona; default: all.")
    ] = None,
    teacher: Annotated[
        str, typer.Option(help=f"Teacher: {', '.join(teacher_names())}.")
    ] = DEFAULT_TEACHER,
    diversity: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="0: plain top-k by uncertainty.")
    ] = 0.5,
    score: Annotated[
        str, typer.Option(help="Uncertainty: mean_entropy, max_entropy or margin.")
    ] = "mean_entropy",
) -> None:
    """Sample uncertain interactions, relabel them with a teacher, write a dataset version.

    An interrupted run (Ctrl-C, teacher down) resumes when the same command runs again.
    """
    from kizuna.datasets.content import ContentCheck
    from kizuna.datasets.relabel import Checks, RelabelConfig
    from kizuna.datasets.relabel import relabel as run_relabel
    from kizuna.evaluation.classifier import load_or_train
    from kizuna.personas import load_profiles
    from kizuna.store.db import open_store
    from kizuna.teacher.registry import build_teacher

    config = settings()
    job = RelabelConfig(
        budget=budget, teacher=teacher, persona=persona, diversity=diversity, score=score
    )
    job.sampler()  # reject bad settings before loading any model
    profiles = _profiles(config, persona)
    factory = open_store(config.resolved_database_url)
    with err.status(f"loading the {teacher} teacher and the persona judge…"):
        chosen = build_teacher(teacher, config)
        judge = load_or_train(load_profiles(config.resolved_personas_dir), config.judge_dir)
    with _bar() as bar:
        task = bar.add_task(f"relabel ({teacher})", total=None, note="")
        result = run_relabel(
            factory,
            job,
            teacher=chosen,
            profiles=profiles,
            export_dir=config.datasets_dir,
            checks=Checks(ContentCheck(), judge.classifier),
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if result.report is None:
        out.print(f"run {result.run_id}: nothing to label (no consented, unlabelled traffic)")
        return
    resumed = " (resumed)" if result.resumed else ""
    out.print(
        f"run {result.run_id}{resumed}: {result.picked} picked, {result.report.kept} kept → "
        f"{job.dataset_name} v{result.dataset_version}"
    )
    _print_quality(result.report.to_json())
    out.print(f"exported: {result.export_path}", soft_wrap=True)


@app.command()
def retrain(
    persona: Persona,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="A retrain config (YAML); the options below override it."),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimiser steps.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Ray Train workers.")] = None,
    strategy: Annotated[str | None, typer.Option(help="deepspeed (ZeRO-2) or ddp.")] = None,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher of the KL term (prompted or hf).")
    ] = None,
    warm_start: Annotated[str | None, typer.Option(help="stable or federated.")] = None,
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", "-d", help="NAME or NAME@VERSION.")
    ] = None,
) -> None:
    """Re-distill a persona's adapter on Ray Train and register the candidate.

    Runs the job `python -m kizuna_jobs.retrain` (the same entry point a KubeRay RayJob
    runs) on a local Ray, with its progress bar; the candidate's report is printed.
    """
    import subprocess
    import tempfile

    import yaml

    config = settings()
    _profiles(config, persona)
    job: dict[str, Any] = {}
    if config_file is not None:
        job = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    trainer = job.setdefault("trainer", {})
    overrides: dict[str, Any] = {"persona": persona, "steps": steps, "teacher": teacher}
    overrides |= {"warm_start": warm_start, "datasets": dataset}
    job |= {key: value for key, value in overrides.items() if value is not None}
    trainer |= {key: v for key, v in {"workers": workers, "strategy": strategy}.items() if v}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(job, handle, allow_unicode=True)
    try:
        command = [sys.executable, "-m", "kizuna_jobs.retrain", "--config", handle.name]
        status = subprocess.run(command, check=False).returncode
    finally:
        Path(handle.name).unlink(missing_ok=True)
    if status != 0:
        raise typer.Exit(status)


@app.command()
def federate(
    persona: Persona,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 2,
    mode: Annotated[str, typer.Option(help="secure (SecAgg+) or robust.")] = "secure",
    rule: Annotated[
        str,
        typer.Option(help="robust mode's rule: multi-krum, krum, trimmed-mean, median, fedavg."),
    ] = "multi-krum",
    superlink: Annotated[
        str | None,
        typer.Option(help="A running SuperLink's HOST:PORT; default: the superlink setting."),
    ] = None,
    local_devices: Annotated[
        int | None,
        typer.Option(min=2, help="Start a local SuperLink and this many simulated devices."),
    ] = None,
    noise_multiplier: Annotated[float, typer.Option(min=0.0, help="DP noise multiplier.")] = 1.0,
    clipping_norm: Annotated[float, typer.Option(min=0.0, help="Update L2 bound.")] = 1.0,
    local_steps: Annotated[int, typer.Option(min=1, help="Training steps per device.")] = 4,
    min_devices: Annotated[int, typer.Option(min=2, help="Fewest devices for a round.")] = 2,
    root_certificates: Annotated[
        Path | None, typer.Option(help="CA certificate of a TLS SuperLink.")
    ] = None,
    factors: Annotated[
        str, typer.Option(help="LoRA factors devices train and send: b (exact mean) or both.")
    ] = "b",
    resume: Annotated[
        int | None,
        typer.Option(help="Resume this failed federated run after its last recorded round."),
    ] = None,
) -> None:
    """Improve a persona's adapter on fleet devices with Flower; registers a candidate.

    With --local-devices N everything runs here: a SuperLink, N simulated devices (each
    with its own data dir and store), the rounds, then a clean shutdown. A run that fails
    or is stopped (Ctrl-C, SIGTERM) is marked failed; --resume RUN continues it.
    """
    import threading

    from kizuna.federation.config import FederationConfig
    from kizuna.federation.deployment import federate as federate_rounds
    from kizuna.store import runs as run_store
    from kizuna.store.adapters import stable_adapter
    from kizuna.store.db import open_store, transaction
    from kizuna.store.models import Run, RunKind, RunPhase

    config = settings()
    if local_devices is None:
        superlink = superlink or config.superlink
        root_certificates = root_certificates or config.superlink_root_certificates
    if (superlink is None) == (local_devices is None):
        raise ValueError(
            "give either --superlink HOST:PORT (or the superlink setting) or --local-devices N"
        )
    profiles = _profiles(config, persona)
    factory = open_store(config.resolved_database_url)
    if resume is not None:
        job = _resumable(factory, persona=persona, run_id=resume)
    else:
        job = FederationConfig.model_validate(
            {
                "persona": persona,
                "rounds": rounds,
                "mode": mode,
                "rule": rule,
                "factors": factors,
                "noise_multiplier": noise_multiplier,
                "clipping_norm": clipping_norm,
                "local_steps": local_steps,
                "min_devices": min(min_devices, local_devices or min_devices),
            }
        )
        with transaction(factory) as session:
            stable_adapter(session, persona=persona)  # fail before starting anything
            new_run = run_store.create_run(
                session, kind=RunKind.FEDERATED, persona=persona, config=job.model_dump()
            )
            job = job.model_copy(update={"run_id": new_run.id})
    run_id, rounds, mode = job.run_id, job.rounds, job.mode
    outcome: list[Any] = []

    def launch() -> None:
        try:
            outcome.append(
                federate_rounds(
                    config,
                    job,
                    superlink=superlink,
                    root_certificates=root_certificates,
                    local_devices=local_devices,
                    profiles=list(profiles.values()),
                )
            )
        except Exception as exc:  # handed to the main thread below
            outcome.append(exc)

    worker = threading.Thread(target=launch, daemon=True)
    worker.start()
    try:
        with _bar() as bar:
            task = bar.add_task(f"federate {persona} ({mode})", total=rounds, note="starting")
            while worker.is_alive():
                worker.join(timeout=1.0)
                with factory() as session:
                    run = session.get(Run, run_id)
                    assert run is not None
                    bar.update(task, completed=round(run.progress * rounds), note=run.message)
    except BaseException as exc:  # Ctrl-C or SIGTERM: main() ends every process next
        _unfinished(factory, run_id, f"stopped ({type(exc).__name__})")
        err.print(
            f"federated run {run_id} stopped; resume: kizuna federate {persona} "
            f"--resume {run_id} ..."
        )
        raise
    flower = outcome[0] if outcome else None
    _unfinished(factory, run_id, _why_unfinished(flower))
    with factory() as session:
        run = session.get(Run, run_id)
        assert run is not None
        rounds_done = run_store.rounds_of(session, run_id=run_id)
    if isinstance(flower, Exception):
        raise flower
    table = Table("round", "participants", "rejected", "seconds", "ε", "note")
    for record in rounds_done:
        seconds = float(record.details.get("seconds", 0.0))
        reasons = "; ".join(f"{r['device']}: {r['reason']}" for r in record.rejected)
        table.add_row(
            str(record.round_number),
            str(record.participants),
            str(len(record.rejected)),
            f"{seconds:.1f}",
            f"{record.epsilon:.3g}" if record.epsilon is not None else "-",
            reasons or str(record.details.get("note", "")),
        )
    out.print(table)
    if run.phase != RunPhase.SUCCEEDED:
        if flower is not None:
            err.print(flower.stdout[-4000:] + flower.stderr[-2000:], markup=False, highlight=False)
        err.print(f"error: federated run {run_id} {run.phase.value}: {run.message}")
        err.print(
            f"resume it after its last recorded round: kizuna federate {persona} "
            f"--resume {run_id} (with the same --superlink or --local-devices)"
        )
        raise typer.Exit(1)
    out.print(f"run {run_id}: {run.message}")


def _resumable(factory: sessionmaker[Session], *, persona: str, run_id: int) -> FederationConfig:
    """The configuration of failed federated run ``run_id`` of ``persona``, reopened."""
    from kizuna.federation.config import FederationConfig
    from kizuna.store.db import transaction
    from kizuna.store.models import Run, RunKind
    from kizuna.store.runs import reopen_run

    with transaction(factory) as session:
        run = session.get(Run, run_id)
        if run is None or run.kind != RunKind.FEDERATED or run.persona != persona:
            raise ValueError(f"no federated run {run_id} of {persona}")
        reopen_run(session, run_id=run_id)
        return FederationConfig.model_validate({**run.config, "run_id": run_id})


def _why_unfinished(flower: subprocess.CompletedProcess[str] | Exception | None) -> str:
    """Why a run the ServerApp did not finish ended, from what ``flwr run`` gave back."""
    if isinstance(flower, Exception):
        return f"{type(flower).__name__}: {flower}"
    if flower is None:
        return "no result"
    # flwr run's own status says only whether it could submit and stream the run.
    return f"the ServerApp ended before the run did (flwr run exit {flower.returncode})"


def _unfinished(factory: sessionmaker[Session], run_id: int, reason: str) -> None:
    """Mark the run failed with ``reason`` if its ServerApp did not finish it."""
    from kizuna.store import runs as run_store
    from kizuna.store.db import transaction
    from kizuna.store.models import Run, RunPhase

    with transaction(factory) as session:
        run = session.get(Run, run_id)
        if run is not None and run.phase in (RunPhase.PENDING, RunPhase.RUNNING):
            run_store.update_run(session, run_id=run_id, phase=RunPhase.FAILED, message=reason)


@device_app.command("simulate")
def device_simulate(
    devices: Annotated[int, typer.Option(min=1, help="How many devices.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where; default: <data dir>/devices.")
    ] = None,
    interactions: Annotated[int, typer.Option(min=1, help="Interactions per device.")] = 48,
    keep_sent_updates: Annotated[
        bool, typer.Option(help="Devices keep a copy of every update they send.")
    ] = False,
) -> None:
    """Create simulated devices, each with its own data dir and interaction store."""
    from kizuna.federation.devices import simulate_devices

    config = settings()
    profiles = _profiles(config, None)
    root = out_dir or config.data_dir / "devices"
    created = simulate_devices(
        root,
        count=devices,
        profiles=list(profiles.values()),
        base_model=config.resolved_base_model,
        interactions=interactions,
        keep_sent_updates=keep_sent_updates,
    )
    for directory in created:
        out.print(str(directory), soft_wrap=True)


@device_app.command("keygen")
def device_keygen(
    data_dir: Annotated[Path, typer.Option(help="The device's data dir (with device.json).")],
) -> None:
    """Make the device's authentication key pair; register the public key on the SuperLink
    with `flwr supernode register <data-dir>/device.pub`."""
    from kizuna.federation.credentials import create_device_key
    from kizuna.federation.manifest import DeviceManifest

    DeviceManifest.read(data_dir)
    _, public = create_device_key(data_dir)
    out.print(str(public), soft_wrap=True)


@device_app.command("run")
def device_run(
    data_dir: Annotated[Path, typer.Option(help="The device's data dir (with device.json).")],
    superlink: Annotated[str, typer.Option(help="The SuperLink's HOST:PORT.")],
    root_certificates: Annotated[
        Path | None, typer.Option(help="CA certificate of a TLS SuperLink; else insecure.")
    ] = None,
    auth_key: Annotated[
        Path | None,
        typer.Option(help="Private key for node authentication; default: <data-dir>/device.key."),
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Local ClientApp API port.")] = 9094,
    max_restarts: Annotated[
        int, typer.Option(min=0, help="Give up after the SuperNode quits this often in a row.")
    ] = 5,
) -> None:
    """Run this device's Flower SuperNode with Kizuna's ClientApp until stopped; a
    SuperNode that quits (a server error) is started again after a growing pause."""
    from kizuna.federation.credentials import DEVICE_KEY_FILE
    from kizuna.federation.deployment import flower_environment, keep_running, supernode_command
    from kizuna.federation.manifest import DeviceManifest

    manifest = DeviceManifest.read(data_dir)
    default_key = data_dir / DEVICE_KEY_FILE
    if auth_key is None and default_key.is_file():
        auth_key = default_key
    command = supernode_command(
        data_dir.resolve(),
        superlink=superlink,
        port=port,
        insecure=root_certificates is None,
        root_certificates=root_certificates,
        auth_key=auth_key,
    )
    err.print(f"device {manifest.device_id} → {superlink}")

    def restarting(status: int, wait_s: float) -> None:
        err.print(f"the SuperNode exited with {status}; rejoining in {wait_s:.0f} s")

    status = keep_running(
        command, env=flower_environment(), max_restarts=max_restarts, on_restart=restarting
    )
    err.print(f"error: the SuperNode quit {max_restarts + 1} times in a row; last status {status}")
    raise typer.Exit(status or 1)


def _print_quality(report: dict[str, Any]) -> None:
    table = Table("filter", "dropped")
    for reason, count in report["dropped"].items():
        table.add_row(reason, str(count))
    table.add_row("[bold]kept[/bold]", f"{report['kept']} of {report['total']}")
    out.print(table)


@corpus_app.command("build")
def corpus_build(
    output: Annotated[
        Path | None, typer.Option("--out", help="JSONL file; default <data_dir>/datasets/.")
    ] = None,
    persona: Annotated[
        list[str] | None, typer.Option("--persona", "-p", help="Only these personas.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N sentences of each language.")
    ] = None,
    store: Annotated[bool, typer.Option(help="Also store it as a dataset version.")] = True,
) -> None:
    """Rewrite the neutral corpus with the rules teacher, filter it, split it, export it."""
    from kizuna.datasets.build import CORPUS_DATASET, build_parallel_corpus
    from kizuna.personas import load_profiles
    from kizuna.store.db import open_store

    config = settings()
    profiles = load_profiles(config.resolved_personas_dir)
    missing = sorted(set(persona or []) - set(profiles))
    if missing:
        from kizuna.personas.loader import unknown_persona

        raise unknown_persona(missing[0], profiles)
    chosen = {pid: profiles[pid] for pid in persona} if persona else profiles
    path = output or config.datasets_dir / f"{CORPUS_DATASET}.jsonl"
    factory = open_store(config.resolved_database_url) if store else None
    with _bar() as bar:
        task = bar.add_task("rules teacher", total=None, note="")
        result = build_parallel_corpus(
            chosen,
            path=path,
            limit=limit,
            factory=factory,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            on_stage=lambda stage: bar.update(task, note=stage),
        )
    _print_quality(result.report.to_json())
    out.print(f"{result.rows} rows ({result.test_rows} test) → {path}", soft_wrap=True)
    out.print(f"quality report → {result.report_path}", soft_wrap=True)
    if result.dataset_version:
        out.print(f"stored as {CORPUS_DATASET} v{result.dataset_version}")


@personas_app.command("list")
def personas_list() -> None:
    """List every persona, shipped and user-added."""
    from kizuna.personas import load_profiles

    user_dir = settings().resolved_personas_dir
    table = Table("id", "中文", "English", "markers (en)", "examples zh/en")
    for pid, profile in load_profiles(user_dir).items():
        counts = f"{len(profile.examples.zh)}/{len(profile.examples.en)}"
        markers = ", ".join(profile.markers.en[:3])
        table.add_row(pid, profile.name.zh, profile.name.en, markers, counts)
    out.print(table)


@personas_app.command("show")
def personas_show(persona: Annotated[str, typer.Argument(help="Persona id.")]) -> None:
    """Show one persona's profile."""
    from kizuna.personas import get_profile

    profile = get_profile(persona, settings().resolved_personas_dir)
    out.print(f"[bold]{profile.name.zh} / {profile.name.en}[/bold] ({profile.id})")
    out.print(profile.description.zh, markup=False)
    out.print(profile.description.en, markup=False)
    out.print("traits: " + "、".join(profile.traits.zh) + " | " + ", ".join(profile.traits.en))
    out.print("markers: " + "、".join(profile.markers.zh) + " | " + ", ".join(profile.markers.en))
    for pattern in profile.patterns:
        out.print(f"- {pattern.name}: {pattern.description.en}", markup=False)
    for level, guidance in profile.intensity.items():
        out.print(f"[{level}] {guidance.en}", markup=False)
    for example in profile.example_pairs()[:4]:
        out.print(f"  {example.input} → {example.target}", markup=False)


@personas_app.command("validate")
def personas_validate(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Profile files; default: every profile.")
    ] = None,
) -> None:
    """Validate profiles against the schema; exit 2 when any is invalid."""
    paths = files or list(profile_files(settings().resolved_personas_dir).values())
    failures = 0
    for path in paths:
        try:
            profile = load_profile(path)
            out.print(f"ok      {path} ({profile.id})")
        except ProfileError as exc:
            failures += 1
            err.print(f"invalid {exc}", markup=False, highlight=False)
    if failures:
        raise typer.Exit(code=2)


@app.command()
def dashboard(
    host: Annotated[str | None, typer.Option(help="Address to bind; default: setting.")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port; default: the setting (8080).")
    ] = None,
) -> None:
    """Serve the ops dashboard: personas, traffic, rounds, runs, rollouts and actions.

    Sign in with KIZUNA_OPS_TOKEN; without one a token is generated in the data dir and
    printed once. Embedded rollouts started here are driven by this process.
    """
    import uvicorn

    from kizuna.dashboard.server import dashboard_app

    config = settings()
    web, created = dashboard_app(config)
    if created is not None:
        out.print(f"ops token (kept in the data dir, shown once): {created}")
    bind = (host or config.dashboard_host, port or config.dashboard_port)
    out.print(f"dashboard on http://{bind[0]}:{bind[1]}/")
    uvicorn.run(web, host=bind[0], port=bind[1], log_level="warning")


@app.command()
def demo(
    persona: Persona = "tsundere",
    requests: Annotated[int, typer.Option(min=8, help="Requests of the traffic stage.")] = 64,
    retrain_steps: Annotated[int, typer.Option(min=1, help="The retrain's optimiser steps.")] = 16,
) -> None:
    """Run the whole loop here, stage by stage, and show the adapter before and after.

    Bootstrap, serve, traffic from simulated devices, active-learning relabel with the
    prompted teacher, a federated round on 4 local devices (DP + SecAgg+), a retrain
    warm-started from it with its evaluation, and a canary rollout to stable under live
    traffic. Every stage's output is kept under <data dir>/demo/.
    """
    from kizuna.demo.loop import DEMO_GATES, DemoLoop, DemoOptions
    from kizuna.demo.stages import StageFailed

    config = settings()
    _profiles(config, persona)
    options = DemoOptions(persona=persona, requests=requests, retrain_steps=retrain_steps)
    loop = DemoLoop(config, options, err)
    err.print(
        f"[bold]Kizuna demo[/bold] — data dir {config.data_dir}, logs in {loop.board.log_dir}\n"
        f"The offline gates are the design's goals (latency aside: p50 ≤ "
        f"{DEMO_GATES.max_latency_ms_cpu / 1000:g} s on these shared cores); a candidate "
        f"that misses one is not rolled out. Then the live gates decide canary → stable."
    )
    try:
        outcome = loop.run()
    except StageFailed as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        err.print(
            f"every stage's log is kept in {loop.board.log_dir}; to resume, run `kizuna demo` "
            "again with the same data dir: the bootstrap keeps its adapters and the stored "
            "interactions stay, so finished work is not repeated from scratch"
        )
        raise typer.Exit(1) from exc
    out.print(outcome.table())
    out.print(outcome.stage_table())
    failed = outcome.failed_gates()
    gates = f"{len(outcome.report['gates']) - len(failed)}/{len(outcome.report['gates'])}"
    out.print(
        f"rollout: {outcome.rollout_phase}; offline gates passed {gates}"
        + (f" (failed: {', '.join(failed)})" if failed else "")
    )
    out.print(f"evaluation report: {outcome.report_html}", soft_wrap=True)
    out.print(f"see it all: {sys.argv[0]} dashboard   (KIZUNA_DATA_DIR={config.data_dir})")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Bring the store's schema to the newest (or a given) revision."""
    from alembic.util import CommandError

    from kizuna.store.db import current_revision, make_engine, upgrade

    engine = make_engine(settings().resolved_database_url)
    try:
        upgrade(engine, revision)
    except CommandError as exc:  # an unknown or ambiguous revision: the user's input
        raise typer.BadParameter(str(exc), param_hint="REVISION") from exc
    out.print(f"store at revision {current_revision(engine)} ({engine.url.render_as_string()})")


def _shut_down_ray() -> None:
    """Stop a local Ray this command started, before its processes are ended."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2; on
    success, failure, Ctrl-C or SIGTERM, every process the command started is ended."""
    processes.become_subreaper()
    processes.raise_on_sigterm()
    try:
        app()
    except USER_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            message = f"invalid setting {field}: {first['msg']}"
        err.print(f"error: {message}", markup=False, highlight=False)
        sys.exit(2)
    finally:
        _shut_down_ray()
        processes.end_descendants()

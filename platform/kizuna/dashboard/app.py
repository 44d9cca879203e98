"""The dashboard's HTTP app: server-rendered pages (Jinja2, inline SVG) and POST actions.

Every page and action needs an authenticated caller (see ``auth.py``); an anonymous
request gets 401 and the login form. Actions ask for confirmation in the page, are
written to the audit log, and go to the configured :class:`OpsBackend`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import fsspec
import yaml
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from kizuna.dashboard import charts, queries
from kizuna.dashboard.auth import SESSION_COOKIE, SESSION_S, Access
from kizuna.personas.loader import profile_files
from kizuna.rollout.backends import OpsBackend, rollout_name
from kizuna.rollout.spec import Decision
from kizuna.store import adapters as adapter_store
from kizuna.store.audit import list_audit, record_audit
from kizuna.store.db import transaction
from kizuna.store.models import Run

logger = logging.getLogger("kizuna.dashboard")
TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TEMPLATES.env.globals.update(line=charts.line, bars=charts.bars)


class NotSignedIn(Exception):
    """The request carries no valid credentials."""


def _actor(request: Request) -> str:
    who: str | None = request.app.state.access.actor(request)
    if who is None:
        raise NotSignedIn
    return who


# Module-level aliases: FastAPI resolves these (postponed) annotations in module globals.
Actor = Annotated[str, Depends(_actor)]
Csrf = Annotated[str | None, Form()]


def build_app(
    *,
    access: Access,
    sessions: sessionmaker[Session],
    backend: OpsBackend,
    personas_dir: Path,
    drive_every_s: float | None = None,
) -> FastAPI:
    """The dashboard; with ``drive_every_s`` a thread moves embedded rollouts meanwhile."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        drive: Callable[[], None] | None = getattr(backend, "drive", None)
        if drive_every_s is not None and drive is not None:
            threading.Thread(target=_drive, args=(drive, stop, drive_every_s), daemon=True).start()
        yield
        stop.set()

    app = FastAPI(title="Kizuna ops", lifespan=lifespan, docs_url=None, redoc_url=None)

    app.state.access = access

    @app.exception_handler(NotSignedIn)
    async def _login_instead(request: Request, _: NotSignedIn) -> Response:
        context = {"next": request.url.path, "error": None}
        return TEMPLATES.TemplateResponse(request, "login.html", context, status_code=401)

    def page(request: Request, name: str, who: str, **context: Any) -> HTMLResponse:
        context |= {"who": who, "csrf": access.csrf_token(request), "page": name}
        return TEMPLATES.TemplateResponse(request, f"{name}.html", context)

    def personas() -> list[str]:
        return sorted(profile_files(personas_dir))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        context = {"next": next, "error": None}
        return TEMPLATES.TemplateResponse(request, "login.html", context)

    @app.post("/login", response_model=None)
    def login(
        request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
    ) -> Response:
        if not access.token_ok(token):
            context = {"next": next, "error": "That is not the ops token."}
            return TEMPLATES.TemplateResponse(request, "login.html", context, status_code=401)
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            access.session_cookie(),
            max_age=SESSION_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout")
    def logout() -> RedirectResponse:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request, who: Actor) -> HTMLResponse:
        with sessions() as session:
            rows = queries.overview(session, personas())
        return page(request, "overview", who, rows=rows)

    @app.get("/traffic", response_class=HTMLResponse)
    def traffic(request: Request, who: Actor) -> HTMLResponse:
        with sessions() as session:
            rows = queries.traffic(session)
        return page(request, "traffic", who, rows=rows, threshold=queries.HIGH_ENTROPY_NATS)

    @app.get("/sampling", response_class=HTMLResponse)
    def sampling(request: Request, who: Actor) -> HTMLResponse:
        with sessions() as session:
            run, picks = queries.latest_sample(session)
        return page(request, "sampling", who, run=run, picks=picks)

    @app.get("/federation", response_class=HTMLResponse)
    def federation(request: Request, who: Actor) -> HTMLResponse:
        with sessions() as session:
            runs, spent = queries.federation(session)
        return page(request, "federation", who, runs=runs, spent=spent)

    @app.get("/runs", response_class=HTMLResponse)
    def runs(request: Request, who: Actor) -> HTMLResponse:
        with sessions() as session:
            rows = queries.retrain_runs(session)
        return page(request, "runs", who, runs=rows)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, run_id: int, who: Actor) -> HTMLResponse:
        with sessions() as session:
            record = session.get(Run, run_id)
        if record is None:
            raise HTTPException(404, f"no run {run_id}")
        history = [(h["step"], h["loss"]) for h in record.metrics.get("history", [])]
        return page(request, "run", who, run=record, history=history)

    @app.get("/reports/{persona}/{version}", response_class=HTMLResponse)
    def report(persona: str, version: int, who: Actor) -> HTMLResponse:
        with sessions() as session:
            adapter = adapter_store.get_adapter(session, persona=persona, version=version)
        url = adapter.metrics.get("report")
        if not url:
            raise HTTPException(404, f"{persona} v{version} has no evaluation report")
        with fsspec.open(url, "r", encoding="utf-8") as handle:
            return HTMLResponse(handle.read())

    @app.get("/rollouts", response_class=HTMLResponse)
    def rollouts(request: Request, who: Actor) -> HTMLResponse:
        with sessions() as session:
            candidates = queries.candidates(session)
        return page(
            request,
            "rollouts",
            who,
            rollouts=backend.rollouts(),
            candidates=candidates,
            personas=personas(),
        )

    @app.get("/audit", response_class=HTMLResponse)
    def audit(request: Request, who: Actor) -> HTMLResponse:
        with sessions() as session:
            events = list_audit(session)
        return page(request, "audit", who, events=events)

    def act(
        request: Request,
        who: str,
        csrf: str | None,
        *,
        action: str,
        target: str,
        persona: str | None,
        details: dict[str, Any],
        perform: Callable[[], None],
    ) -> RedirectResponse:
        if not access.csrf_ok(request, csrf):
            raise HTTPException(403, "the form is stale or from elsewhere; reload the page")
        if persona is not None and persona not in personas():
            raise HTTPException(422, f"unknown persona {persona!r}")
        try:
            perform()
        except (ValueError, LookupError) as exc:
            raise HTTPException(422, str(exc)) from exc
        with transaction(sessions) as session:
            record_audit(session, actor=who, action=action, target=target, details=details)
        return RedirectResponse("/rollouts", status_code=303)

    @app.post("/actions/retrain")
    def retrain(
        request: Request,
        who: Actor,
        persona: Annotated[str, Form()],
        steps: Annotated[int, Form(ge=1, le=100_000)] = 48,
        datasets: Annotated[str, Form()] = "",
        teacher: Annotated[str, Form()] = "",
        job_yaml: Annotated[str, Form()] = "",
        csrf: Csrf = None,
    ) -> RedirectResponse:
        job = _job_settings(job_yaml) | {"steps": steps}
        if datasets.strip():
            job["datasets"] = [d.strip() for d in datasets.split(",") if d.strip()]
        if teacher.strip():
            job["teacher"] = teacher.strip()
        name = rollout_name(persona, "retrain")
        return act(
            request,
            who,
            csrf,
            action="retrain",
            target=name,
            persona=persona,
            details=job,
            perform=lambda: backend.retrain(persona, job, name=name),
        )

    @app.post("/actions/canary")
    def canary(
        request: Request,
        who: Actor,
        persona: Annotated[str, Form()],
        candidate: Annotated[int, Form(ge=1)],
        override: Annotated[bool, Form()] = False,
        csrf: Csrf = None,
    ) -> RedirectResponse:
        name = rollout_name(persona, f"v{candidate}")
        details = {"candidate": candidate, "override_gates": override}
        return act(
            request,
            who,
            csrf,
            action="start canary",
            target=name,
            persona=persona,
            details=details,
            perform=lambda: backend.start_canary(persona, candidate, name=name, override=override),
        )

    @app.post("/actions/decide")
    def decide(
        request: Request,
        who: Actor,
        rollout: Annotated[str, Form()],
        decision: Annotated[str, Form(pattern="^(promote|rollback)$")],
        csrf: Csrf = None,
    ) -> RedirectResponse:
        choice: Decision = "promote" if decision == "promote" else "rollback"
        return act(
            request,
            who,
            csrf,
            action=choice,
            target=rollout,
            persona=None,
            details={},
            perform=lambda: backend.decide(rollout, choice),
        )

    @app.post("/actions/pause")
    def pause(
        request: Request,
        who: Actor,
        persona: Annotated[str, Form()],
        paused: Annotated[bool, Form()] = True,
        csrf: Csrf = None,
    ) -> RedirectResponse:
        return act(
            request,
            who,
            csrf,
            action="pause" if paused else "resume",
            target=persona,
            persona=persona,
            details={},
            perform=lambda: backend.pause(persona, paused),
        )

    return app


def _job_settings(text: str) -> dict[str, Any]:
    """Extra retrain job settings typed as YAML in the form (a mapping, or nothing)."""
    if not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HTTPException(422, f"job settings are not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise HTTPException(422, "job settings must be a YAML mapping")
    return data


def _drive(drive: Callable[[], None], stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            drive()
        except Exception:  # a bad pass must not end the loop; the next one retries
            logger.exception("rollout pass failed")

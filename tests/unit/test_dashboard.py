"""The ops dashboard over a real store: refusal without credentials, sessions, CSRF,
every page rendering real data, actions reaching the rollout backends and the audit log."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from kizuna.config import Settings
from kizuna.dashboard.app import build_app
from kizuna.dashboard.auth import SESSION_COOKIE, Access
from kizuna.personas.loader import profile_files
from kizuna.rollout.backends import KUBERNETES_GRANTS, KubernetesOps, LocalOps
from kizuna.rollout.resources import RetrainRunSpec
from kizuna.store import adapters, runs
from kizuna.store.audit import list_audit
from kizuna.store.db import open_store, transaction
from kizuna.store.models import AdapterStatus, RunKind, RunPhase, utcnow
from support import log_served

TOKEN = "ops-secret-token"
PAGES = ["/", "/traffic", "/sampling", "/federation", "/runs", "/rollouts", "/audit"]
ACTIONS = {
    "/actions/retrain": {"persona": "tsundere", "steps": "2"},
    "/actions/canary": {"persona": "tsundere", "candidate": "2"},
    "/actions/decide": {"rollout": "x", "decision": "promote"},
    "/actions/pause": {"persona": "tsundere", "paused": "true"},
}
GOOD = {
    "style_accuracy": 0.9,
    "content_preservation": 0.95,
    "distinct_2": 0.6,
    "latency_p50_ms": 40.0,
    "latency_p95_ms": 60.0,
    "gates_passed": True,
    "gates": {},
}


@pytest.fixture
def store(tmp_path: Path) -> tuple[Settings, sessionmaker[Session]]:
    settings = Settings(data_dir=tmp_path / "data")
    sessions = open_store(settings.resolved_database_url)
    with transaction(sessions) as session:
        for status, metrics in ((AdapterStatus.STABLE, {}), (AdapterStatus.CANDIDATE, GOOD)):
            adapters.register_adapter(
                session,
                persona="tsundere",
                artifact_url=f"file:///a/{uuid.uuid4()}",
                sha256="0" * 64,
                status=status,
                metrics=metrics,
            )
        run = runs.create_run(session, kind=RunKind.RETRAIN, persona="tsundere")
        runs.update_run(
            session,
            run_id=run.id,
            phase=RunPhase.RUNNING,
            progress=0.5,
            message="training from step 0 of 4",
            metrics={"history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]},
        )
        fed = runs.create_run(session, kind=RunKind.FEDERATED, persona="tsundere")
        runs.record_round(
            session,
            run_id=fed.id,
            round_number=1,
            participants=4,
            update_norms=[0.5, 0.7],
            rejected=[{"device": "dev-9", "reason": "NaN in update"}],
            epsilon=4.73,
            started_at=utcnow() - timedelta(seconds=30),
        )
    log_served(sessions, version=1, n=40)
    return settings, sessions


@pytest.fixture
def client(store: tuple[Settings, sessionmaker[Session]]) -> TestClient:
    settings, sessions = store
    app = build_app(
        access=Access(TOKEN, user_header="X-Auth-Request-Email"),
        sessions=sessions,
        backend=LocalOps(settings, sessions),
        personas_dir=settings.resolved_personas_dir,
    )
    return TestClient(app)


def signed_in(client: TestClient) -> TestClient:
    response = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303 and SESSION_COOKIE in response.cookies
    return client


def csrf(client: TestClient) -> str:
    page = client.get("/rollouts").text
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_is_refused_without_a_token(client: TestClient, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{SESSION_COOKIE}=ops|9|x"}):
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert "Sign in with the ops token" in response.text
        assert "tsundere" not in response.text


@pytest.mark.parametrize("path", sorted(ACTIONS))
def test_every_action_is_refused_without_a_token(
    client: TestClient, store: tuple[Settings, sessionmaker[Session]], path: str
) -> None:
    assert client.post(path, data=ACTIONS[path]).status_code == 401
    with store[1]() as session:
        assert list_audit(session) == []


def test_a_wrong_token_does_not_sign_in(client: TestClient) -> None:
    response = client.post("/login", data={"token": "guess"}, follow_redirects=False)
    assert response.status_code == 401 and "not the ops token" in response.text


def test_an_expired_or_forged_session_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    access = Access(TOKEN)
    cookie = access.session_cookie()
    _, expires, signature = cookie.split("|")
    assert access._session_actor(cookie) == "ops"
    assert access._session_actor(f"admin|{expires}|{signature}") is None
    monkeypatch.setattr(time, "time", lambda: int(expires) + 1)
    assert access._session_actor(cookie) is None
    assert Access("another-token")._session_actor(cookie) is None  # rotated token


def test_pages_show_the_store(client: TestClient) -> None:
    signed_in(client)
    overview = client.get("/").text
    assert 'data-persona="tsundere"' in overview and "v1" in overview and "0.900" in overview
    assert "<svg" in overview
    assert "40" in client.get("/traffic").text
    federation = client.get("/federation").text
    assert "dev-9: NaN in update" in federation and "4.73" in federation
    runs_page = client.get("/runs").text
    assert "training from step 0 of 4" in runs_page and "50%" in runs_page
    assert "<polyline" in client.get("/runs/1").text
    assert client.get("/runs/99").status_code == 404
    assert "No relabel run yet" in client.get("/sampling").text


def test_actions_need_the_forms_csrf_token(
    client: TestClient, store: tuple[Settings, sessionmaker[Session]]
) -> None:
    signed_in(client)
    data = {"persona": "tsundere", "candidate": "2"}
    assert client.post("/actions/canary", data=data).status_code == 403
    assert client.post("/actions/canary", data={**data, "csrf": "forged"}).status_code == 403
    with store[1]() as session:
        assert list_audit(session) == []


def test_a_canary_is_started_promoted_and_audited(
    client: TestClient, store: tuple[Settings, sessionmaker[Session]]
) -> None:
    settings, sessions = store
    signed_in(client)
    token = csrf(client)
    response = client.post(
        "/actions/canary",
        data={"persona": "tsundere", "candidate": "2", "csrf": token},
        follow_redirects=False,
    )
    assert response.status_code == 303
    backend = LocalOps(settings, sessions)
    backend.drive()
    backend.drive()
    [rollout] = backend.rollouts()
    assert rollout.phase == "Canary" and rollout.candidate == 2
    assert "Promote" in client.get("/rollouts").text
    client.post(
        "/actions/decide", data={"rollout": rollout.name, "decision": "promote", "csrf": token}
    )
    assert 'class="stable">v2' in client.get("/").text
    audit = client.get("/audit").text
    assert "start canary" in audit and "promote" in audit and rollout.name in audit


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/actions/canary", {"persona": "nobody", "candidate": "2"}, 422),
        ("/actions/canary", {"persona": "tsundere", "candidate": "9"}, 422),
        ("/actions/canary", {"persona": "tsundere", "candidate": "-1"}, 422),
        ("/actions/retrain", {"persona": "tsundere", "job_yaml": "[1, 2"}, 422),
        ("/actions/retrain", {"persona": "tsundere", "job_yaml": "- a list"}, 422),
        ("/actions/decide", {"rollout": "none", "decision": "sideways"}, 422),
        ("/actions/decide", {"rollout": "none", "decision": "promote"}, 422),
    ],
)
def test_bad_actions_get_a_clear_4xx(
    client: TestClient, path: str, data: dict[str, str], status: int
) -> None:
    response = client.post(path, data=data, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == status, response.text
    assert "detail" in response.json()


def test_scripts_use_a_bearer_token_and_proxies_a_user_header(client: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/", headers=bearer).status_code == 200
    response = client.post(
        "/actions/pause", data={"persona": "tsundere"}, headers=bearer, follow_redirects=False
    )
    assert response.status_code == 303  # no CSRF needed: browsers never send this header
    page = client.get("/audit", headers={"X-Auth-Request-Email": "mei@example.com"})
    assert page.status_code == 200 and "ops-token" in page.text and "pause" in page.text


class FakeCustomObjects:
    """The calls KubernetesOps makes on kubernetes.client.CustomObjectsApi."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.grants: set[tuple[str, str, str]] = set()

    def create_namespaced_custom_object(self, *args: Any) -> None:
        self.calls.append(("create", args))
        self.grants.add((args[0], args[3], "create"))

    def patch_namespaced_custom_object(self, *args: Any) -> None:
        self.calls.append(("patch", args))
        self.grants.add((args[0], args[3], "patch"))

    def list_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        self.grants.add((args[0], args[3], "list"))
        return {
            "items": [
                {
                    "metadata": {"name": "tsundere-retrain-1"},
                    "spec": {"persona": "tsundere"},
                    "status": {"phase": "Canary", "candidateVersion": 7, "canaryWeight": 0.1},
                }
            ]
        }


def test_in_a_cluster_actions_are_custom_resources(
    store: tuple[Settings, sessionmaker[Session]],
) -> None:
    settings = store[0].model_copy(update={"kubernetes_namespace": "kizuna"})
    api = FakeCustomObjects()
    ops = KubernetesOps(settings, store[1], api=api)
    ops.retrain("tsundere", {"trainer": {"steps": 10}}, name="tsundere-retrain-1")
    ops.decide("tsundere-retrain-1", "rollback")
    ops.pause("tsundere", True)
    (_, create), (_, decide), (_, pause) = api.calls[:3]
    group, version, namespace, plural, body = create
    assert (group, version, namespace, plural) == ("kizuna.ai", "v1alpha1", "kizuna", "retrainruns")
    assert RetrainRunSpec.model_validate(body["spec"]).trainer.steps == 10
    assert decide[-1] == {"spec": {"decision": "rollback", "paused": False}}
    assert pause[3:] == ("personalities", "tsundere", {"spec": {"paused": True}})
    [view] = ops.rollouts()
    assert (view.phase, view.candidate, view.weight) == ("Canary", 7, 0.1)
    ops.start_canary("tsundere", 7, name="tsundere-v7-1", override=False)
    assert api.calls[-1][1][-1]["spec"] == {"persona": "tsundere", "candidate": 7}
    assert api.grants == KUBERNETES_GRANTS  # what the chart's dashboard Role allows
    with pytest.raises(ValueError):
        ops.start_canary("tsundere", 7, name="x", override=True)


def test_the_personas_listed_are_the_profiles(
    store: tuple[Settings, sessionmaker[Session]], client: TestClient
) -> None:
    signed_in(client)
    page = client.get("/rollouts").text
    for persona in profile_files(store[0].resolved_personas_dir):
        assert f"<option>{persona}</option>" in page

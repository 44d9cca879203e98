"""The HTTP API of one replica: real engine, store, journal and router; no Ray needed."""

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.model.finetune import FinetuneArgs
from kizuna.serve.runtime import Replica
from kizuna.store.db import transaction
from kizuna.store.devices import register_device
from kizuna.store.interactions import count_interactions, get_interaction
from support import API_TOKEN, QuietProgress

pytestmark = pytest.mark.integration
TOKEN = API_TOKEN
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _stored(replica: Replica, public_id: str):
    replica.service.journal.flush()
    with replica.service.sessions() as session:
        return get_interaction(session, public_id=public_id)


def _count(replica: Replica) -> int:
    replica.service.journal.flush()
    with replica.service.sessions() as session:
        return count_interactions(session)


BODY = {
    "text": "I can help you with this problem.",
    "persona": "tsundere",
    "strength": 0.8,
    "max_new_tokens": 6,
    "consent": True,
}


def test_transform_answers_and_records_the_interaction(make_replica) -> None:
    replica, client = make_replica()
    response = client.post("/v1/transform", json=BODY, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["persona"], body["adapter_version"], body["cached"]) == ("tsundere", 1, False)
    assert body["entropy_max"] >= body["entropy_mean"] > 0
    row = _stored(replica, body["interaction_id"])
    assert row is not None and row.consent and row.strength == 0.8
    assert row.adapter_versions == {"tsundere": 1} and len(row.token_entropies) > 0
    assert row.output_text == body["output"]


def test_unauthenticated_calls_get_401_and_write_nothing(make_replica) -> None:
    replica, client = make_replica()
    before = _count(replica)
    for path, payload in [
        ("/v1/transform", BODY),
        ("/v1/feedback", {"interaction_id": "x", "thumbs_up": True}),
        (
            "/v1/chat/completions",
            {"model": "cool", "messages": [{"role": "user", "content": "hi"}]},
        ),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
            assert client.post(path, json=payload, headers=headers).status_code == 401
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/personas").status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert _count(replica) == before
    for probe in ("/v1/nope-1", "/v1/nope-2", "/wp-admin"):
        assert client.get(probe).status_code == 404
    metrics = client.get("/metrics").text
    assert 'endpoint="unmatched"' in metrics and "nope-1" not in metrics
    assert 'endpoint="/v1/transform",status="401"' in metrics


def test_device_tokens_authenticate_and_are_recorded(make_replica) -> None:
    replica, client = make_replica()
    with transaction(replica.service.sessions) as session:
        token = register_device(session, device_id="gadget-1")
    response = client.post("/v1/transform", json=BODY, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert _stored(replica, response.json()["interaction_id"]).device_id == "gadget-1"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"persona": "pirate"}, "persona"),
        ({"persona": "tsundere@9"}, "persona"),
        ({"persona": "tsundere@x"}, "persona"),
        ({"strength": 1.5}, "strength"),
        ({"text": "   "}, "text"),
        ({"text": "a" * 5000}, "text"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"persona": None, "mix": {"tsundere": -1}}, "mix"),
        ({"persona": None, "mix": {"tsundere": 0, "cool": 0}}, "mix"),
        ({"persona": None, "mix": {"pirate": 1}}, "mix"),
        ({"mix": {"cool": 1}}, "exactly one of persona or mix"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(make_replica, change, field) -> None:
    replica, client = make_replica()
    before = _count(replica)
    response = client.post("/v1/transform", json={**BODY, **change}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json())
    assert _count(replica) == before


def test_malformed_json_and_oversized_bodies(make_replica) -> None:
    _, client = make_replica()
    bad = client.post(
        "/v1/transform", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert bad.status_code == 422
    huge = client.post(
        "/v1/transform",
        content=b"x" * (300 * 1024),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413


def test_a_retried_request_is_logged_once(make_replica) -> None:
    replica, client = make_replica()
    before = _count(replica)
    headers = {**AUTH, "Idempotency-Key": "order-42"}
    first = client.post("/v1/transform", json=BODY, headers=headers).json()
    second = client.post("/v1/transform", json=BODY, headers=headers).json()
    assert first["interaction_id"] == second["interaction_id"]
    assert _count(replica) == before + 1


def test_mixes_and_the_result_cache(make_replica) -> None:
    _, client = make_replica()
    body = {**BODY, "persona": None, "mix": {"tsundere": 0.7, "cool": 0.3}}
    first = client.post("/v1/transform", json=body, headers=AUTH).json()
    second = client.post("/v1/transform", json=body, headers=AUTH).json()
    assert first["adapter_versions"] == {"tsundere": 1, "cool": 1}
    assert (first["cached"], second["cached"]) == (False, True)
    assert (
        second["output"] == first["output"] and second["interaction_id"] != first["interaction_id"]
    )
    metrics = client.get("/metrics").text
    assert 'kizuna_cache_lookups_total{result="hit"} 1.0' in metrics


def test_chat_completions_plain_and_streamed(make_replica) -> None:
    _, client = make_replica()
    request = {
        "model": "cool@1",
        "messages": [{"role": "user", "content": "How are you?"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    plain = client.post("/v1/chat/completions", json=request, headers=AUTH)
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["object"] == "chat.completion"
    assert (
        body["usage"]["completion_tokens"]
        == body["usage"]["total_tokens"] - body["usage"]["prompt_tokens"]
        > 0
    )
    content = body["choices"][0]["message"]["content"]
    with client.stream(
        "POST", "/v1/chat/completions", json={**request, "stream": True}, headers=AUTH
    ) as stream:
        events = [
            line.removeprefix("data: ") for line in stream.iter_lines() if line.startswith("data: ")
        ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    streamed = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert streamed == content and chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    base = client.post("/v1/chat/completions", json={**request, "model": "base"}, headers=AUTH)
    assert base.status_code == 200 and base.json()["kizuna"]["adapter_versions"] == {}


def test_models_personas_and_feedback(make_replica) -> None:
    replica, client = make_replica()
    models = {m["id"]: m for m in client.get("/v1/models", headers=AUTH).json()["data"]}
    assert models["tsundere"]["stable_version"] == 1 and "tsundere@1" in models and "base" in models
    personas = client.get("/v1/personas", headers=AUTH).json()
    assert {"tsundere", "gentle"} <= {p["id"] for p in personas}
    interaction = client.post("/v1/transform", json=BODY, headers=AUTH).json()["interaction_id"]
    assert (
        client.post(
            "/v1/feedback", json={"interaction_id": interaction, "thumbs_up": False}, headers=AUTH
        ).status_code
        == 200
    )
    assert _stored(replica, interaction).feedback == -1
    missing = client.post(
        "/v1/feedback", json={"interaction_id": "nope", "thumbs_up": True}, headers=AUTH
    )
    assert missing.status_code == 404


def test_a_new_stable_version_is_served_without_a_restart(
    make_replica, serving_data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = shutil.copytree(serving_data_dir, tmp_path / "data")  # the shared store stays
    _, client = make_replica(data_dir=data)
    assert client.post("/v1/transform", json=BODY, headers=AUTH).json()["adapter_version"] == 1
    settings = Settings(data_dir=data, base_model=str(tiny_model_dir), device="cpu")
    bootstrap(
        settings,
        progress=QuietProgress(),
        args=FinetuneArgs(steps=1, batch_size=4, seed=3),
        personas=["tsundere"],
        force=True,
    )
    response = client.post("/v1/transform", json={**BODY, "text": "Something new."}, headers=AUTH)
    assert response.json()["adapter_version"] == 2


def test_overload_is_a_429_with_retry_after(make_replica) -> None:
    replica, client = make_replica(serve_max_in_flight=1)
    replica.service._in_flight = 1  # one request is being served right now
    response = client.post("/v1/transform", json=BODY, headers=AUTH)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    replica.service._in_flight = 0
    assert client.post("/v1/transform", json=BODY, headers=AUTH).status_code == 200


def _body(text: str) -> str:
    return json.dumps({"text": text, "persona": "tsundere", "max_new_tokens": 4})


CRAFTED = {
    "1 MB body": (_body("a" * 1_000_000), {413}),
    "10,000-deep array": ("[" * 10_000 + "]" * 10_000, {400, 422}),
    "10,000-deep object": ('{"text":' + '{"a":' * 10_000 + "1" + "}" * 10_001, {400, 422}),
    "lone surrogate": ('{"text":"\\ud800 hi","persona":"tsundere"}', {422}),
    "lone surrogate in chat": (
        '{"model":"tsundere","messages":[{"role":"user","content":"\\udc00"}]}',
        {422},
    ),
    "NUL": (_body("hi\x00there"), {200, 422}),
    "bidi override": (_body("hi \u202e dlrow"), {200}),
    "10,000 combining marks": (_body("a" + "\u0301" * 10_000), {422}),
    "invalid UTF-8": (b'{"text":"\xff\xfe","persona":"tsundere"}', {400, 422}),
}


@pytest.mark.reliability
@pytest.mark.parametrize("name", sorted(CRAFTED))
@pytest.mark.parametrize("path", ["/v1/transform", "/v1/chat/completions"])
def test_crafted_inputs_never_get_a_server_error(make_replica, name: str, path: str) -> None:
    payload, expected = CRAFTED[name]
    _, client = make_replica()
    client = TestClient(client.app, raise_server_exceptions=False)
    response = client.post(
        path, content=payload, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code < 500, response.text
    if path == "/v1/transform":
        assert response.status_code in expected, response.text

"""The OpenAI-compatible surface: the fields clients send, implemented for real; the
fields Kizuna cannot honour refused by name; boundary values never a server error."""

import json
import re
from pathlib import Path

import pytest

from kizuna.serve.runtime import Replica
from kizuna.store.interactions import get_interaction
from support import API_TOKEN

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
MESSAGES = [{"role": "user", "content": "Could you look at my essay before Friday?"}]
CHAT = {"model": "tsundere", "messages": MESSAGES, "max_tokens": 16, "temperature": 0}
COMPLETION = {"model": "tsundere", "prompt": "The meeting moved to", "max_tokens": 12}


def _stored(replica: Replica, public_id: str):
    replica.service.journal.flush()
    with replica.service.sessions() as session:
        return get_interaction(session, public_id=public_id)


def _events(response) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(line) for line in lines[:-1]]


def _streamed_texts(events: list[dict], key: str) -> dict[int, str]:
    texts: dict[int, str] = {}
    for event in events:
        for choice in event["choices"]:
            piece = choice["delta"].get("content", "") if key == "delta" else choice["text"]
            texts[choice["index"]] = texts.get(choice["index"], "") + piece
    return texts


def _stop_inside(text: str) -> str:
    """Two characters from the middle of ``text``: a stop string the reply would reach."""
    middle = len(text) // 2
    stop = text[middle : middle + 2]
    assert len(text) > 6 and stop.strip(), text
    return stop


def test_the_fields_clients_send_are_accepted_and_work(make_replica) -> None:
    replica, client = make_replica()
    body = {
        **CHAT,
        "n": 2,
        "temperature": 0.9,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "repetition_penalty": 1.2,
        "logprobs": True,
        "top_logprobs": 3,
        "max_completion_tokens": 16,
        "max_tokens": None,
        "response_format": {"type": "text"},
        "user": "end-user-42",
        "metadata": {"app": "companion"},
        "store": False,
        "parallel_tool_calls": True,
        "tool_choice": "none",
    }
    response = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    first, second = answer["choices"]
    assert (first["index"], second["index"]) == (0, 1)
    ids = [choice["kizuna"]["interaction_id"] for choice in answer["choices"]]
    assert ids[0] == answer["id"] and ids[1] != ids[0]
    for choice in (first, second):
        content = choice["logprobs"]["content"]
        assert content and all(len(entry["top_logprobs"]) == 3 for entry in content)
        assert all(entry["logprob"] <= 0 for entry in content)
    tokens = sum(len(choice["logprobs"]["content"]) for choice in answer["choices"])
    assert answer["usage"]["completion_tokens"] == tokens
    # Seeded choices differ from each other, and each is reproducible.
    assert first["message"]["content"] != second["message"]["content"]
    again = client.post("/v1/chat/completions", json=body, headers=AUTH).json()
    assert [c["message"]["content"] for c in again["choices"]] == [
        c["message"]["content"] for c in answer["choices"]
    ]
    for interaction_id, choice in zip(ids, answer["choices"], strict=True):
        stored = _stored(replica, interaction_id)
        assert stored.end_user == "end-user-42"
        assert stored.output_text == choice["message"]["content"]


def test_penalties_change_the_reply(make_replica) -> None:
    _, client = make_replica()
    plain = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 32}, headers=AUTH)
    penalised = client.post(
        "/v1/chat/completions",
        json={**CHAT, "max_tokens": 32, "frequency_penalty": 2.0, "presence_penalty": 2.0},
        headers=AUTH,
    )
    assert plain.status_code == penalised.status_code == 200
    assert plain.json()["choices"][0]["message"] != penalised.json()["choices"][0]["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_stop_string_ends_the_reply_before_it(make_replica, stream: bool) -> None:
    _, client = make_replica()
    free = client.post("/v1/chat/completions", json=CHAT, headers=AUTH).json()
    text = free["choices"][0]["message"]["content"]
    stop = _stop_inside(text)
    body = {**CHAT, "stop": [stop, "never-said"], "stream": stream}
    response = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    if stream:
        events = _events(response)
        assert stop not in "".join(
            choice["delta"].get("content", "") for event in events for choice in event["choices"]
        )
        got = _streamed_texts(events, "delta")[0]
        finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    else:
        got = response.json()["choices"][0]["message"]["content"]
        finish = [response.json()["choices"][0]["finish_reason"]]
    assert got == text[: text.find(stop)].strip() and finish == ["stop"]


def test_a_stream_of_several_choices_ends_with_the_usage(make_replica) -> None:
    _, client = make_replica()
    whole = client.post("/v1/chat/completions", json=CHAT, headers=AUTH).json()
    body = {**CHAT, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    events = _events(client.post("/v1/chat/completions", json=body, headers=AUTH))
    *chunks, usage = events
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    expected = whole["choices"][0]["message"]["content"]
    assert _streamed_texts(chunks, "delta") == {0: expected, 1: expected}  # greedy: the same
    ends = [c for e in chunks for c in e["choices"] if c["finish_reason"]]
    assert sorted(c["index"] for c in ends) == [0, 1]
    assert usage["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]


def test_streamed_logprobs_cover_every_token(make_replica) -> None:
    _, client = make_replica()
    body = {**CHAT, "stream": True, "logprobs": True, "top_logprobs": 2}
    events = _events(client.post("/v1/chat/completions", json=body, headers=AUTH))
    whole = client.post("/v1/chat/completions", json={**CHAT, "logprobs": True}, headers=AUTH)
    streamed = [
        entry["logprob"]
        for event in events
        for choice in event["choices"]
        if choice.get("logprobs")
        for entry in choice["logprobs"]["content"]
    ]
    expected = [entry["logprob"] for entry in whole.json()["choices"][0]["logprobs"]["content"]]
    assert streamed == expected


def test_developer_messages_and_text_parts_are_understood(make_replica) -> None:
    _, client = make_replica()
    body = {
        **CHAT,
        "messages": [
            {"role": "developer", "content": "You are a companion character."},
            {"role": "user", "content": [{"type": "text", "text": MESSAGES[0]["content"]}]},
        ],
    }
    as_parts = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert as_parts.status_code == 200, as_parts.text
    plain = client.post("/v1/chat/completions", json=CHAT, headers=AUTH).json()
    assert as_parts.json()["choices"][0]["message"] == plain["choices"][0]["message"]


def test_completions_continue_the_prompt(make_replica) -> None:
    replica, client = make_replica()
    response = client.post(
        "/v1/completions", json={**COMPLETION, "temperature": 0, "logprobs": 2}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "text_completion"
    [choice] = answer["choices"]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == answer["usage"]["completion_tokens"]
    assert (
        len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == len(logprobs["tokens"])
    )
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert choice["finish_reason"] in {"stop", "length"}
    stored = _stored(replica, answer["id"])
    assert stored.request_text == COMPLETION["prompt"] and stored.output_text == choice["text"]
    echoed = client.post(
        "/v1/completions", json={**COMPLETION, "temperature": 0, "echo": True}, headers=AUTH
    ).json()
    assert echoed["choices"][0]["text"] == COMPLETION["prompt"] + choice["text"]


def test_completions_of_several_prompts_and_choices_stream(make_replica) -> None:
    _, client = make_replica()
    prompts = ["The meeting moved to", "My cat is"]
    body = {**COMPLETION, "prompt": prompts, "n": 2, "temperature": 0}
    whole = client.post("/v1/completions", json=body, headers=AUTH).json()
    texts = [choice["text"] for choice in whole["choices"]]
    assert len(texts) == 4 and texts[0] == texts[1] and texts[2] == texts[3]
    streamed = client.post(
        "/v1/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers=AUTH,
    )
    *chunks, usage = _events(streamed)
    assert _streamed_texts(chunks, "text") == dict(enumerate(texts))
    assert usage["usage"] == whole["usage"]


@pytest.mark.parametrize(
    ("path", "fields", "named"),
    [
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {}}]}, "tools"),
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
        ("/v1/chat/completions", {"logit_bias": {"42": 5}}, "logit_bias"),
        ("/v1/chat/completions", {"modalities": ["text", "audio"]}, "modalities"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages",
        ),
        ("/v1/completions", {"suffix": "and then?"}, "suffix"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"echo": True, "logprobs": 1}, "echo"),
    ],
)
def test_what_kizuna_cannot_do_is_a_400_naming_the_field(
    make_replica, path: str, fields: dict, named: str
) -> None:
    _, client = make_replica()
    base = CHAT if path.endswith("chat/completions") else COMPLETION
    response = client.post(path, json={**base, **fields}, headers=AUTH)
    assert response.status_code == 400, response.text
    [detail] = response.json()["detail"]
    assert detail["loc"][1] == named and "supported" in detail["msg"], detail


def test_an_unknown_field_is_a_422_naming_it(make_replica) -> None:
    _, client = make_replica()
    response = client.post("/v1/chat/completions", json={**CHAT, "temprature": 1}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "temprature"]


HUGE = 99999999999999999999  # past int64
BOUNDARIES = [
    ("/v1/chat/completions", {**CHAT, "model": f"tsundere@{HUGE}"}, 422),
    ("/v1/chat/completions", {**CHAT, "model": "tsundere@²"}, 422),
    ("/v1/chat/completions", {**CHAT, "model": "tsundere@0"}, 422),
    ("/v1/chat/completions", {**CHAT, "model": "tsundere@-1"}, 422),
    ("/v1/completions", {**COMPLETION, "model": f"cool@{HUGE}"}, 422),
    ("/v1/transform", {"text": "Hi.", "persona": f"tsundere@{HUGE}"}, 422),
    ("/v1/transform", {"text": "Hi.", "mix": {f"tsundere@{HUGE}": 1.0}}, 422),
    ("/v1/chat/completions", {**CHAT, "seed": HUGE}, 422),
    ("/v1/chat/completions", {**CHAT, "seed": -1}, 422),
    ("/v1/chat/completions", {**CHAT, "n": HUGE}, 422),
    ("/v1/chat/completions", {**CHAT, "n": 0}, 422),
    ("/v1/chat/completions", {**CHAT, "max_tokens": -(2**70)}, 422),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": HUGE}, 422),
    ("/v1/completions", {**COMPLETION, "logprobs": -1}, 422),
    ("/v1/completions", {**COMPLETION, "n": 3, "prompt": ["a", "b", "c"]}, 422),
    ("/v1/chat/completions", {**CHAT, "temperature": -0.0}, 200),
    ("/v1/transform", {"text": "Hi.", "persona": "cool", "strength": -0.0}, 200),
    ("/v1/transform", {"text": "Hi.", "mix": {"cool": -0.0, "tsundere": 1.0}}, 200),
]
RAW_BOUNDARIES = [  # JSON that Python's json.dumps would not write
    ("/v1/chat/completions", '"temperature": 1e999'),
    ("/v1/chat/completions", '"presence_penalty": -1e999'),
    ("/v1/transform", '"strength": 1e999'),
    ("/v1/transform", '"mix": {"cool": 1e999}'),
    ("/v1/completions", '"top_p": NaN'),
]


@pytest.mark.parametrize(("path", "body", "status"), BOUNDARIES)
def test_boundary_values_are_answered_never_a_server_error(
    make_replica, path: str, body: dict, status: int
) -> None:
    _, client = make_replica()
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == status, response.text


@pytest.mark.parametrize(("path", "field"), RAW_BOUNDARIES)
def test_non_finite_numbers_are_refused(make_replica, path: str, field: str) -> None:
    _, client = make_replica()
    base = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION}.get(
        path, {"text": "Hi.", "persona": "cool"}
    )
    name = field.split(":")[0].strip('"')
    text = json.dumps({k: v for k, v in base.items() if k != name})[:-1] + ", " + field + "}"
    if name == "mix":
        text = text.replace('"persona": "cool", ', "")
    response = client.post(path, content=text, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text


def test_long_idempotency_keys_fit_the_store(make_replica, serving_data_dir: Path) -> None:
    replica, client = make_replica()
    key = "k" * 128  # the longest the header allows; scoped, it is over the column's 128
    response = client.post(
        "/v1/chat/completions", json={**CHAT, "n": 2}, headers={**AUTH, "Idempotency-Key": key}
    )
    assert response.status_code == 200
    ids = [choice["kizuna"]["interaction_id"] for choice in response.json()["choices"]]
    assert all(len(i) <= 128 for i in ids) and len(set(ids)) == 2
    assert all(_stored(replica, i) is not None for i in ids)


def test_the_logprobs_bytes_add_up_to_the_reply(make_replica) -> None:
    _, client = make_replica()
    body = {
        **CHAT,
        "messages": [{"role": "user", "content": "我们周五见，好吗？"}],
        "logprobs": True,
    }
    answer = client.post("/v1/chat/completions", json=body, headers=AUTH).json()
    [choice] = answer["choices"]
    raw = b"".join(bytes(entry["bytes"]) for entry in choice["logprobs"]["content"])
    # Pieces of a character carry their own bytes, so together they spell the reply.
    text = re.sub(r"<\|\w+\|>", "", raw.decode("utf-8", errors="replace"))  # specials
    assert text.rstrip("\ufffd").strip() == choice["message"]["content"]

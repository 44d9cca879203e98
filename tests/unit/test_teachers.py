"""Teachers: the rules baseline, the prompted model, the OpenAI-compatible client."""

import logging
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from pydantic import SecretStr

from chat_endpoint import ChatHandler
from kizuna.config import Settings
from kizuna.datasets.content import ContentCheck
from kizuna.datasets.persona_corpus import authored_rewrites
from kizuna.evaluation.classifier import PersonaClassifier, training_texts
from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.engine import Engine
from kizuna.model.prompts import prompt_ids, reply_ids
from kizuna.personas import load_profiles
from kizuna.teacher import openai_compatible
from kizuna.teacher.base import LogitTeacher, StyleRequest, Teacher, TeacherUnavailableError
from kizuna.teacher.corpus import CorpusTeacher, Sampling
from kizuna.teacher.openai_compatible import OpenAICompatibleTeacher, RateLimiter
from kizuna.teacher.persona_prompt import persona_messages
from kizuna.teacher.prompted import PromptedTeacher
from kizuna.teacher.registry import build_teacher, teacher_names
from kizuna.teacher.rules import RulesTeacher
from support import free_port, random_adapter

PROFILES = load_profiles()


def _request(text: str, persona: str = "tsundere", strength: float = 0.6) -> StyleRequest:
    return StyleRequest(text=text, persona=PROFILES[persona], strength=strength)


class TestRules:
    def test_every_persona_keeps_the_input_and_adds_a_marker_at_every_level(self) -> None:
        teacher = RulesTeacher()
        for persona, profile in PROFILES.items():
            for text in ("The train leaves at eight in the morning.", "火车早上八点出发。"):
                markers = [m.lower().strip(".") for m in [*profile.markers.en, *profile.markers.zh]]
                for strength in (0.3, 0.6, 1.0):
                    (target,) = teacher.relabel([_request(text, persona, strength)])
                    assert text in target, (persona, strength, target)
                    assert any(m in target.lower() for m in markers), (persona, target)

    def test_stronger_requests_add_more_personality(self) -> None:
        teacher = RulesTeacher()
        for persona in PROFILES:
            lengths = [
                len(teacher.relabel([_request("I finished the report.", persona, s)])[0])
                for s in (0.3, 0.6, 1.0)
            ]
            assert lengths[0] < lengths[1] < lengths[2], (persona, lengths)

    def test_deterministic_and_strength_zero_is_the_input(self) -> None:
        teacher = RulesTeacher()
        request = _request("Your report looks good.")
        assert teacher.relabel([request]) == teacher.relabel([request])
        assert teacher.relabel([_request("Your report looks good.", strength=0.0)]) == [
            "Your report looks good."
        ]
        assert teacher.relabel([_request("No full stop", strength=0.3)])[0].endswith("stop.")

    def test_a_corpus_uses_every_phrase_of_a_profile(self) -> None:
        teacher = RulesTeacher()
        texts = [f"Item number {i} is ready." for i in range(200)]
        targets = " ".join(teacher.relabel([_request(t, strength=1.0) for t in texts]))
        phrases = PROFILES["tsundere"].rules.en
        for phrase in [*phrases.openers, *phrases.closers]:
            assert phrase in targets


def test_the_registry_builds_teachers_by_name(settings: Settings) -> None:
    assert teacher_names() == ["corpus", "hf", "openai", "prompted", "rules"]
    rules = build_teacher("rules", settings)
    assert isinstance(rules, Teacher) and rules.name == "rules"
    with pytest.raises(ValueError, match=r"unknown teacher 'gpt'.*rules"):
        build_teacher("gpt", settings)
    with pytest.raises(TeacherUnavailableError, match="KIZUNA_TEACHER_URL"):
        build_teacher("openai", settings)
    with pytest.raises(TeacherUnavailableError, match="KIZUNA_TEACHER_HF_MODEL"):
        build_teacher("hf", settings)


def test_the_persona_prompt_uses_the_language_and_intensity_of_the_request() -> None:
    messages = persona_messages(_request("你今晚应该好好休息。", strength=1.0), shots=3)
    assert messages[0]["role"] == "system" and "傲娇" in messages[0]["content"]
    assert PROFILES["tsundere"].intensity["exaggerated"].zh in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 3 + ["user"]
    zh_targets = {e.target for e in PROFILES["tsundere"].examples.zh}
    assert all(m["content"] in zh_targets for m in messages[2:-1:2])
    assert messages[-1]["content"].endswith("你今晚应该好好休息。")


@pytest.fixture(scope="module")
def prompted(tiny_model_dir: Path) -> PromptedTeacher:
    engine = Engine(
        load_base_model(str(tiny_model_dir), device=torch.device("cpu")),
        load_tokenizer(str(tiny_model_dir)),
        max_adapters=1,
    )
    return PromptedTeacher(engine, name="prompted", model_label="tiny", max_new_tokens=8)


class TestPrompted:
    def test_relabels_greedily_and_reproducibly(self, prompted: PromptedTeacher) -> None:
        teacher = prompted
        requests = [_request(f"The meeting is at {h} o'clock.") for h in range(3)]
        first = teacher.relabel(requests)
        assert len(first) == 3 and all(isinstance(t, str) for t in first)
        assert teacher.relabel(requests) == first
        assert teacher.version == "prompted-1:tiny"

    def test_target_logits_align_with_the_students_reply_tokens(
        self, prompted: PromptedTeacher, tiny_model_dir: Path
    ) -> None:
        teacher = prompted
        assert isinstance(teacher, LogitTeacher)
        request, target = _request("Thank you for the gift."), "Hmph, fine."
        logits = teacher.target_logits(request, target)
        tokenizer = load_tokenizer(str(tiny_model_dir))
        reply = reply_ids(tokenizer, target)
        assert logits.shape == (len(reply), len(tokenizer))
        # Recompute with a plain forward pass: row i must predict reply token i.
        prompt = prompt_ids(tokenizer, persona_messages(request))
        model = load_base_model(str(tiny_model_dir), device=torch.device("cpu"))
        with torch.no_grad():
            full = model(input_ids=torch.tensor([prompt + reply])).logits[0]
        expected = full[len(prompt) - 1 : -1]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


class _Endpoint(ChatHandler):
    """A real HTTP chat endpoint that fails ``failures`` times, then answers."""

    failures = 0
    status = 503
    seen: list[dict] = []  # noqa: RUF012 - per-test state, reset by the fixture
    lock = threading.Lock()

    def answer(self, body: dict) -> tuple[int, str | None]:
        with self.lock:
            type(self).seen.append({"body": body, "auth": self.headers.get("Authorization")})
            fail = type(self).failures > 0
            type(self).failures -= 1
        return (type(self).status, None) if fail else (200, " Hmph, fine. ")


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(openai_compatible, "BACKOFF_BASE_S", 0.01)
    _Endpoint.failures, _Endpoint.status, _Endpoint.seen = 0, 503, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _client(url: str, **overrides: object) -> OpenAICompatibleTeacher:
    values: dict = dict(
        base_url=url,
        model="{persona}",
        api_key=SecretStr("sk-very-secret"),
        timeout_s=5.0,
        max_retries=3,
        requests_per_s=1000.0,
        max_tokens=32,
    )
    return OpenAICompatibleTeacher(**{**values, **overrides})


class TestOpenAICompatible:
    def test_asks_for_the_persona_model_with_the_key_and_returns_the_reply(
        self, endpoint: str
    ) -> None:
        teacher = _client(endpoint)
        assert teacher.relabel([_request("I can help you.")]) == ["Hmph, fine."]
        (call,) = _Endpoint.seen
        assert call["auth"] == "Bearer sk-very-secret"
        assert call["body"]["model"] == "tsundere" and call["body"]["temperature"] == 0.0
        assert call["body"]["messages"][-1]["content"].endswith("I can help you.")
        assert "sk-very-secret" not in teacher.version

    def test_retries_429_and_5xx_with_backoff_and_never_logs_the_key(
        self, endpoint: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        _Endpoint.failures, _Endpoint.status = 2, 429
        with caplog.at_level(logging.DEBUG):
            assert _client(endpoint).relabel([_request("Hello.")]) == ["Hmph, fine."]
        assert len(_Endpoint.seen) == 3
        assert "HTTP 429" in caplog.text and "sk-very-secret" not in caplog.text

    def test_gives_up_with_one_clear_error(self, endpoint: str) -> None:
        _Endpoint.failures = 99
        with pytest.raises(TeacherUnavailableError, match="did not answer after 3 attempts"):
            _client(endpoint, max_retries=2).relabel([_request("Hello.")])

    def test_a_client_error_is_not_retried(self, endpoint: str) -> None:
        _Endpoint.failures, _Endpoint.status = 1, 401
        with pytest.raises(TeacherUnavailableError, match="refused the request: HTTP 401"):
            _client(endpoint).relabel([_request("Hello.")])
        assert len(_Endpoint.seen) == 1

    def test_a_down_endpoint_is_named_in_the_error(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG):
            url = f"http://127.0.0.1:{free_port()}/v1"
            with pytest.raises(TeacherUnavailableError, match=f"{url}/chat/completions"):
                _client(url, max_retries=1).relabel([_request("Hello.")])
        assert "sk-very-secret" not in caplog.text


def test_the_rate_limiter_spaces_calls_evenly() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        limiter.wait()
    assert slept == [0.25, 0.25, 0.25]
    now[0] += 10.0  # idle time does not bank a burst beyond one call
    limiter.wait()
    limiter.wait()
    assert slept[-1] == 0.25


def test_prompted_logits_line_up_with_the_students_labelled_positions(
    prompted: PromptedTeacher, tiny_model_dir: Path
) -> None:
    from kizuna.model.distill import DistillationWeights, distillation_loss
    from kizuna.model.finetune import Pair, collate, encode_pair, labelled_logits
    from kizuna.model.lora import LoraShape, new_adapter

    tokenizer = load_tokenizer(str(tiny_model_dir))
    request, target = _request("The file is saved in the shared folder."), "Hmph. It's saved."
    student = new_adapter(
        load_base_model(str(tiny_model_dir), device=torch.device("cpu")), LoraShape()
    )
    encoded = encode_pair(tokenizer, Pair(request.text, target, request.strength), max_length=256)
    batch = collate([encoded], pad_id=tokenizer.pad_token_id)
    logits, labels = labelled_logits(student, batch)
    teacher_logits = prompted.target_logits(request, target)
    assert teacher_logits.shape == logits.shape
    assert labels.tolist() == reply_ids(tokenizer, target)
    loss = distillation_loss(logits, labels, teacher_logits, DistillationWeights())
    loss.backward()
    assert torch.isfinite(loss)


class TestCorpus:
    @pytest.fixture(scope="class")
    def teacher(self, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
        engine = Engine(
            load_base_model(str(tiny_model_dir), device=torch.device("cpu")),
            load_tokenizer(str(tiny_model_dir)),
            max_adapters=1,
            max_rank=4,
        )
        adapter = random_adapter(tiny_model_dir, tmp_path_factory.mktemp("a") / "t", seed=1, rank=4)
        engine.load_adapter("tsundere@1", adapter)
        judge = PersonaClassifier.train(training_texts(PROFILES)[0])
        return CorpusTeacher(
            engine,
            judge,
            ContentCheck(),
            adapters={"tsundere": "tsundere@1"},
            sampling=Sampling(adapter_samples=1, max_new_tokens=6),
        )

    def test_a_train_input_gets_its_authored_rewrite_and_a_held_out_one_never(
        self, teacher
    ) -> None:
        train = authored_rewrites(["tsundere"], split="train")[0]
        held_out = authored_rewrites(["tsundere"], split="test")[0]
        targets = teacher.relabel(
            [_request(train.input, strength=1.0), _request(held_out.input, strength=1.0)]
        )
        assert targets[0] == train.target
        assert targets[1] != held_out.target  # generated: a held-out rewrite is never taught
        assert teacher.version.startswith("corpus-1:samples=1:tsundere=tsundere@1")

    def test_the_best_candidate_keeps_the_content_before_it_is_most_in_voice(self, teacher) -> None:
        request = _request("The train leaves at 8:15, so don't be late.", strength=1.0)
        changed = "Hmph, the train leaves at 9:15, idiot! It's not like I care if you're late!"
        kept = "The train leaves at 8:15, so don't be late. Not that I care, idiot."
        flat = "The train leaves at 8:15, so don't be late."
        assert teacher.best(request, [changed, flat, kept]) == kept

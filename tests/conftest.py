"""Shared fixtures: a tiny real model, isolated settings, and stores on SQLite and PostgreSQL.

The tiny model is the real Llama architecture (the embedded base's) with 2 layers and
small widths, and a byte-level BPE tokenizer trained here on the persona texts, with a
ChatML chat template like SmolLM2's. Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.model.finetune import FinetuneArgs
from kizuna.personas import load_profiles
from kizuna.serve.runtime import Replica
from kizuna.store.db import make_engine, session_factory, upgrade
from support import API_TOKEN, PostgresServer, QuietProgress, in_process_replica

ReplicaFactory = Callable[..., "tuple[Replica, TestClient]"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _persona_corpus() -> list[str]:
    lines = []
    for profile in load_profiles().values():
        for example in profile.example_pairs():
            lines += [example.input, example.target]
    return lines


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """Write a 2-layer Llama and its tokenizer to ``directory`` as a normal checkpoint."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_persona_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # With the default init (0.02) the frozen tied head bounds every logit by about
        # |h|·|e| = 8 x 0.16 = 1.3 nats, so no adapter could learn anything measurable.
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def judge_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One persona-judge cache for the run: the judge is keyed by its training set, and
    training it (about a minute here) in every test's fresh data dir cost CI minutes."""
    return tmp_path_factory.mktemp("judge-cache")


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, judge_cache_dir: Path
) -> None:
    """No test reads the developer's settings or writes outside its temporary directories."""
    for name in list(os.environ):
        if name.startswith("KIZUNA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KIZUNA_JUDGE_CACHE_DIR", str(judge_cache_dir))


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", base_model=str(tiny_model_dir), device="cpu")


@pytest.fixture
def bootstrapped(settings: Settings) -> Settings:
    """``settings`` with a stable tsundere adapter (one training step on the tiny model)."""
    bootstrap(settings, progress=QuietProgress(), args=FinetuneArgs(steps=1), personas=["tsundere"])
    return settings


# --- serving: one bootstrapped store the API tests share (they only add interactions) ---


@pytest.fixture(scope="session")
def serving_data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A data directory with stable tsundere and cool adapters (two steps each)."""
    data = tmp_path_factory.mktemp("serve-data")
    bootstrap(
        Settings(data_dir=data, base_model=str(tiny_model_dir), device="cpu"),
        progress=QuietProgress(),
        args=FinetuneArgs(steps=2, batch_size=4),
        personas=["tsundere", "cool"],
    )
    return data


@pytest.fixture
def make_replica(serving_data_dir: Path, tiny_model_dir: Path) -> Iterator[ReplicaFactory]:
    """Builds in-process replicas over ``serving_data_dir`` (bearer ``API_TOKEN``);
    settings may be overridden. Each is closed (its journal flushed) after the test."""
    replicas: list[Replica] = []

    def make(**overrides: object) -> tuple[Replica, TestClient]:
        values: dict[str, object] = {
            "data_dir": serving_data_dir,
            "base_model": str(tiny_model_dir),
            "device": "cpu",
            "api_tokens": API_TOKEN,
            "serve_refresh_s": 0.01,
        }
        replica = in_process_replica(Settings(**{**values, **overrides}))  # type: ignore[arg-type]
        replicas.append(replica)
        return replica, TestClient(replica.app)

    yield make
    for replica in replicas:
        replica.close()


# --- PostgreSQL: a throwaway server per test session, started by the tests themselves ---


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if url := os.environ.get("KIZUNA_TEST_POSTGRES_URL"):
        yield url
        return
    server = PostgresServer.create()
    try:
        yield server.url
    finally:
        server.remove()


def _reset_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.integration]),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each supported kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)

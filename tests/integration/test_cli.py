"""The ``kizuna`` command as a user runs it: a real process, its output and exit code."""

import subprocess
from pathlib import Path

import pytest
import yaml
from alembic.script import ScriptDirectory
from cli_runner import kizuna

from kizuna.personas.loader import SHIPPED_DIR
from kizuna.store.db import MIGRATIONS_DIR

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    return {
        "KIZUNA_DATA_DIR": str(tmp_path / "data"),
        "KIZUNA_BASE_MODEL": str(tiny_model_dir),
        "KIZUNA_DEVICE": "cpu",
    }


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_personas_list_show_and_validate(env: dict[str, str]) -> None:
    listed = kizuna("personas", "list", env=env)
    assert listed.returncode == 0
    for name in ("tsundere", "傲娇", "天然呆", "腹黑", "高冷", "温柔", "活泼"):
        assert name in listed.stdout
    shown = kizuna("personas", "show", "tsundere", env=env)
    assert shown.returncode == 0 and "affirmation_to_denial" in shown.stdout
    assert kizuna("personas", "validate", env=env).returncode == 0


def test_validate_reports_a_broken_user_profile(env: dict[str, str], tmp_path: Path) -> None:
    raw = yaml.safe_load((SHIPPED_DIR / "cool.yaml").read_text(encoding="utf-8"))
    raw["examples"]["zh"] = raw["examples"]["zh"][:2]
    bad = tmp_path / "cool.yaml"
    bad.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    result = kizuna("personas", "validate", str(bad), env=env)
    assert result.returncode == 2 and "examples.zh" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "extra_env", "fragment"),
    [
        (["transform", "hi", "--persona", "pirate"], {}, "unknown persona 'pirate'"),
        (["transform", "hi", "--persona", "cool"], {}, "no stable adapter"),
        (["transform", "  ", "--persona", "cool"], {}, "text is empty"),
        (["personas", "show", "pirate"], {}, "unknown persona"),
        (["personas", "list"], {"KIZUNA_SERVE_PORT": "eighty"}, "invalid setting serve_port"),
        (["personas", "list"], {"KIZUNA_CONFIG": "/nope.yaml"}, "not a file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(env, args, extra_env, fragment) -> None:
    kizuna("db", "upgrade", env=env)
    assert_one_line_error(kizuna(*args, env={**env, **extra_env}), fragment)


def test_out_of_range_strength_is_refused_by_the_parser(env: dict[str, str]) -> None:
    result = kizuna("transform", "hi", "--persona", "cool", "--strength", "1.5", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_an_unknown_revision_is_refused_by_the_parser(env: dict[str, str]) -> None:
    result = kizuna("db", "upgrade", "tsundere", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Can't locate revision" in result.stderr


def test_db_upgrade_then_bootstrap_then_transform_and_chat(env: dict[str, str]) -> None:
    upgraded = kizuna("db", "upgrade", env=env)
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert upgraded.returncode == 0 and f"revision {head}" in upgraded.stdout
    booted = kizuna("bootstrap", "--persona", "tsundere", "--steps", "2", env=env)
    assert booted.returncode == 0, booted.stderr
    assert "tsundere" in booted.stdout
    result = kizuna(
        "transform",
        "I can help you with this problem.",
        "--persona",
        "tsundere",
        "--strength",
        "0.8",
        "--max-new-tokens",
        "6",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "tsundere v1" in result.stderr and "entropy mean" in result.stderr
    chat = kizuna(
        "chat",
        "--persona",
        "tsundere",
        "--max-new-tokens",
        "4",
        env=env,
        stdin="hello\nhow are you?\n",
    )
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("tsundere> ") == 2


def test_relabel_rejects_bad_input_in_one_line(env: dict[str, str]) -> None:
    assert_one_line_error(
        kizuna("relabel", "--budget", "3", "--persona", "grumpy", env=env), "unknown persona"
    )
    assert_one_line_error(
        kizuna("relabel", "--budget", "3", "--teacher", "gpt5", env=env), "unknown teacher"
    )
    assert_one_line_error(
        kizuna("relabel", "--budget", "3", "--teacher", "openai", env=env), "KIZUNA_TEACHER_URL"
    )
    assert_one_line_error(
        kizuna("relabel", "--budget", "3", "--score", "loss", env=env), "score must be"
    )
    empty = kizuna("relabel", "--budget", "3", env=env)
    assert empty.returncode == 0 and "nothing to label" in empty.stdout


def test_corpus_build_writes_the_parallel_corpus(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "corpus.jsonl"
    result = kizuna(
        "corpus", "build", "--limit", "5", "--persona", "cool", "--out", str(out), env=env
    )
    assert result.returncode == 0, result.stderr
    assert "stored as parallel-rules v1" in result.stdout and "content_lost" in result.stdout
    assert len(out.read_text().splitlines()) >= 27  # 10 sentences × 3 strengths, ≥ 90 % kept
    assert_one_line_error(
        kizuna("corpus", "build", "--persona", "grumpy", env=env), "unknown persona"
    )

from pathlib import Path

import pytest
from pydantic import ValidationError

from kizuna.config import EMBEDDED_BASE_MODEL, Settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_fill_in_embedded_paths(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.base_model == EMBEDDED_BASE_MODEL
    assert settings.resolved_base_model == str(tmp_path / "models" / "SmolLM2-135M-Instruct")
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'kizuna.db'}"
    assert settings.resolved_artifact_url == (tmp_path / "artifacts").as_uri()
    assert settings.resolved_personas_dir == tmp_path / "personas"


def test_environment_overrides_and_comma_separated_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIZUNA_BASE_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    monkeypatch.setenv("KIZUNA_API_TOKENS", "alpha, beta,,gamma")
    monkeypatch.setenv("KIZUNA_SERVE_PORT", "9000")
    settings = Settings()
    assert settings.resolved_base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert [t.get_secret_value() for t in settings.api_tokens] == ["alpha", "beta", "gamma"]
    assert settings.serve_port == 9000
    assert "alpha" not in repr(settings)


def test_yaml_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "custom.yaml"
    config.write_text("serve_port: 8100\ndevice: cpu\n")
    monkeypatch.setenv("KIZUNA_CONFIG", str(config))
    assert Settings().serve_port == 8100
    monkeypatch.setenv("KIZUNA_SERVE_PORT", "8200")
    assert Settings().serve_port == 8200
    assert Settings().device == "cpu"


def test_local_kizuna_yaml_is_picked_up(tmp_path: Path) -> None:
    (tmp_path / "kizuna.yaml").write_text("serve_host: 0.0.0.0\n")
    assert Settings().serve_host == "0.0.0.0"


def test_missing_named_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIZUNA_CONFIG", "/nonexistent/kizuna.yaml")
    with pytest.raises(FileNotFoundError, match="not a file"):
        Settings()


@pytest.mark.parametrize(
    ("field", "value"), [("serve_port", 0), ("device", "tpu"), ("no_such_setting", 1)]
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


@pytest.mark.parametrize("path", sorted(REPO.glob("*.yaml")) + sorted(REPO.glob("config/*.yaml")))
def test_every_shipped_config_file_loads(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("KIZUNA_CONFIG", str(path))
    Settings()


def test_an_example_config_is_shipped() -> None:
    assert (REPO / "kizuna.example.yaml").is_file()

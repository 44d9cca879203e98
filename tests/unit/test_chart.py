"""The Helm chart, rendered by the real helm binary that `make chart` fetches."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from kizuna.config import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kizuna"
HELM = REPO / ".tools" / "bin" / "helm"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))


@pytest.fixture(scope="module")
def helm() -> Path:
    if not HELM.is_file():
        if os.environ.get("CI"):
            pytest.fail("helm is missing; `make chart` fetches it")
        pytest.skip("helm is missing; run `make chart`")
    return HELM


def render(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", "kizuna", str(CHART), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_the_rendered_settings_file_loads(
    helm: Path, values: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = render(helm, "-f", str(values))
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    config = tmp_path / "kizuna.yaml"
    config.write_text(configmap["data"]["kizuna.yaml"])
    monkeypatch.setenv("KIZUNA_CONFIG", str(config))
    settings = Settings()
    expected = yaml.safe_load(values.read_text())["settings"]
    assert settings.base_model == expected["baseModel"]
    assert settings.resolved_artifact_url == expected["artifactUrl"]


@pytest.mark.parametrize(
    "override",
    [
        "settings.device=tpu",
        "settings.artifactUrl=not-a-url",
        "image.pullPolicy=Sometimes",
        "surprise=1",
    ],
)
def test_the_schema_refuses_bad_values(helm: Path, override: str) -> None:
    result = render(helm, "--set", override)
    assert result.returncode != 0
    assert "schema" in result.stderr.lower()

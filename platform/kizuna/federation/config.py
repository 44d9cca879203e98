"""One federated run's settings. They travel to the ServerApp as Flower's run config
(flat, dash-separated keys declared in ``app/pyproject.toml``) and to the devices inside
each round's instructions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["secure", "robust"]
#: ``b``: only the LoRA B factors are trained and sent (exact aggregation); ``both``: A and B.
Factors = Literal["b", "both"]
RunConfigValue = bool | int | float | str


class FederationConfig(BaseModel):
    """How one persona's adapter is improved across fleet devices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    persona: str = "tsundere"
    rounds: int = Field(default=2, ge=1, le=1000)
    mode: Mode = "secure"
    #: Robust mode's aggregation rule, by registered name (see ``strategies``).
    rule: str = "multi-krum"
    trim_fraction: float = Field(default=0.2, ge=0.0, lt=0.5)
    #: The LoRA factors devices train and send: ``b`` (A frozen and shared, FFA-LoRA: the
    #: mean of the updates is exact) or ``both`` (A and B averaged apart: inexact).
    factors: Factors = "b"
    #: How often a round that fails (an error, too few valid updates) is played before it
    #: is recorded as incomplete; a failed attempt releases nothing, so costs no ε.
    round_attempts: int = Field(default=2, ge=1, le=10)
    #: Krum's assumed number of malicious devices.
    byzantine: int = Field(default=1, ge=0)
    min_devices: int = Field(default=2, ge=2)
    #: How long a round waits for ``min_devices`` to be connected.
    device_wait_s: float = Field(default=120.0, gt=0)
    #: How long one message exchange may take before missing devices count as dropped.
    stage_timeout_s: float = Field(default=600.0, gt=0)
    local_steps: int = Field(default=4, ge=1)
    batch_size: int = Field(default=4, ge=1)
    learning_rate: float = Field(default=5e-4, gt=0)
    max_pairs: int = Field(default=256, ge=1)
    #: L2 bound of one device's update (device-side in ``secure``, server-side in ``robust``);
    #: in ``secure`` mode it is also SecAgg+'s per-coordinate quantization range.
    clipping_norm: float = Field(default=1.0, gt=0)
    noise_multiplier: float = Field(default=1.0, ge=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    #: SecAgg+: each device shares its keys with this fraction of the sampled devices.
    share_fraction: float = Field(default=1.0, gt=0, le=1)
    #: SecAgg+: shares needed to reconstruct a key, as a fraction of the shares.
    reconstruction_threshold: float = Field(default=0.5, gt=0, le=1)
    quantization_range: int = Field(default=2**22, ge=2**8, le=2**24)
    #: The store run this federated run reports into (0: the ServerApp creates one).
    run_id: int = Field(default=0, ge=0)
    #: The adapter version the rounds start from (0: the persona's stable version).
    start_version: int = Field(default=0, ge=0)
    #: Keep each round's aggregate before noise in the data dir. Off by default: it is
    #: what the server already sees, but storing it widens who can; tests verify with it.
    record_aggregates: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _rule_exists(self) -> FederationConfig:
        from kizuna.federation.strategies import rule_named

        rule_named(self.rule)
        return self

    def to_run_config(self) -> dict[str, RunConfigValue]:
        """Flower's run config: dash-separated keys."""
        return {key.replace("_", "-"): value for key, value in self.model_dump().items()}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> FederationConfig:
        """Parse Flower's run config (unknown keys are an error)."""
        return cls.model_validate({key.replace("-", "_"): v for key, v in run_config.items()})

    def overrides(self) -> str:
        """``flwr run --run-config`` text: every value, TOML-typed."""
        parts = []
        for key, value in self.to_run_config().items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            parts.append(f"{key}={text}")
        return " ".join(parts)

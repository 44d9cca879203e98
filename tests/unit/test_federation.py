"""Federation pieces without a network: run config, update checks, rules, privacy."""

import logging
import math
import tomllib
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from flwr.common.config import parse_config_args
from pydantic import ValidationError

from kizuna.federation.config import FederationConfig
from kizuna.federation.deployment import APP_DIR
from kizuna.federation.exactness import aggregation_error, full_update
from kizuna.federation.manifest import DeviceManifest
from kizuna.federation.privacy import add_noise, epsilon
from kizuna.federation.server_app import noise_std
from kizuna.federation.strategies.robust import combine, screen
from kizuna.federation.strategies.rules import RULES, rule_named
from kizuna.federation.task import RoundInstructions
from kizuna.federation.updates import AdapterLayout, Arrays, clipped, l2_norm

LAYOUT = AdapterLayout.of({"b.lora_B": torch.zeros(4, 2), "a.lora_A": torch.zeros(2, 3)})


def _update(value: float) -> list[np.ndarray]:
    return [np.full(shape, value, dtype=np.float32) for shape in LAYOUT.shapes]


class TestRunConfig:
    def test_the_flower_app_declares_every_setting_with_the_same_default(self) -> None:
        declared = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
        assert declared["tool"]["flwr"]["app"]["config"] == FederationConfig().to_run_config()

    def test_overrides_parse_back_to_the_same_config(self) -> None:
        config = FederationConfig(persona="cool", mode="robust", rule="median", run_id=7)
        parsed = parse_config_args([config.overrides()])
        assert FederationConfig.from_run_config(parsed) == config

    def test_unknown_rule_and_bad_values_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="unknown aggregation rule 'mean'"):
            FederationConfig(rule="mean")
        with pytest.raises(ValidationError):
            FederationConfig(mode="open")  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            FederationConfig(clipping_norm=0)
        with pytest.raises(ValidationError):
            FederationConfig.from_run_config({"persona": "cool", "unknown-key": 1})

    def test_instructions_round_trip(self) -> None:
        instructions = RoundInstructions(
            persona="cool",
            run_id=3,
            round=2,
            steps=4,
            batch_size=2,
            learning_rate=1e-3,
            max_pairs=8,
            clipping_norm=0.5,
            seed=1,
            names=list(LAYOUT.names),
            adapter_config='{"r": 2}',
            factors="b",
        )
        assert RoundInstructions.decode(instructions.encode()) == instructions
        assert instructions.sent_names == ["b.lora_B"]


class TestUpdates:
    def test_layout_is_sorted_by_name(self) -> None:
        assert LAYOUT.names == ("a.lora_A", "b.lora_B")
        assert LAYOUT.shapes == ((2, 3), (4, 2))

    @pytest.mark.parametrize(
        ("arrays", "reason"),
        [
            (_update(0.1)[:1], "expected 2 tensors, got 1"),
            ([np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32)], "shape (3, 2)"),
            ([np.zeros((2, 3), np.int32), np.zeros((4, 2), np.float32)], "not floating point"),
            ([np.full((2, 3), np.nan, np.float32), np.zeros((4, 2), np.float32)], "NaN or Inf"),
            ([np.zeros((2, 3), np.float32), np.full((4, 2), np.inf, np.float32)], "NaN or Inf"),
        ],
    )
    def test_problems_are_named(self, arrays: list[np.ndarray], reason: str) -> None:
        problem = LAYOUT.problem(arrays, max_norm=None)
        assert problem is not None and reason in problem

    def test_norm_bound(self) -> None:
        update = _update(1.0)  # 14 ones: norm √14
        assert LAYOUT.problem(update, max_norm=4.0) is None
        assert "exceeds the bound" in str(LAYOUT.problem(update, max_norm=3.0))

    def test_clipping_scales_long_updates_only(self) -> None:
        long, short = _update(1.0), _update(0.01)
        assert l2_norm(clipped(long, 1.0)) == pytest.approx(1.0, rel=1e-6)
        assert l2_norm(long) == pytest.approx(math.sqrt(14))  # the input is untouched
        np.testing.assert_array_equal(clipped(short, 1.0)[0], short[0])


class TestRules:
    def test_every_rule_is_registered_by_name(self) -> None:
        assert set(RULES) == {"fedavg", "trimmed-mean", "median", "krum", "multi-krum"}
        with pytest.raises(ValueError, match="known: fedavg"):
            rule_named("mean")

    def test_robust_rules_ignore_one_far_update_and_the_mean_does_not(self) -> None:
        rng = np.random.default_rng(0)
        honest = [_update(1.0) for _ in range(8)]
        honest = [[a + rng.normal(0, 0.01, a.shape).astype(np.float32) for a in u] for u in honest]
        attacked = [*honest, _update(100.0)]
        for name in ("trimmed-mean", "median", "krum", "multi-krum"):
            config = FederationConfig(mode="robust", rule=name)
            result = combine(attacked, config)
            assert all(abs(float(a.mean()) - 1.0) < 0.05 for a in result), name
        mean = combine(attacked, FederationConfig(mode="robust", rule="fedavg"))
        assert float(mean[0].mean()) == pytest.approx(1.0 + 99.0 / 9, rel=1e-3)

    def test_screen_rejects_invalid_updates_with_a_logged_reason(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        nan = _update(0.0)
        nan[1][0, 0] = np.nan
        replies = [
            ("device-a", _update(0.1)),
            ("device-b", nan),
            ("device-c", "the ClientApp raised LookupError"),
            ("device-d", _update(10.0)),
        ]
        config = FederationConfig(mode="robust", clipping_norm=1.0)
        with caplog.at_level(logging.WARNING):
            accepted, rejected, norms = screen(replies, LAYOUT, config)
        assert [r.device for r in rejected] == ["device-b", "device-c"]
        assert "NaN" in rejected[0].reason and rejected[1].reason.startswith("no update:")
        assert "device-b" in caplog.text and "NaN" in caplog.text
        assert norms == pytest.approx([0.1 * math.sqrt(14), 10 * math.sqrt(14)], rel=1e-6)
        assert [l2_norm(u) for u in accepted] == pytest.approx([0.1 * math.sqrt(14), 1.0], rel=1e-5)


class TestPrivacy:
    def test_epsilon_grows_with_rounds_and_shrinks_with_noise(self) -> None:
        assert epsilon(noise_multiplier=1.0, rounds=0, delta=1e-5) == 0.0
        assert epsilon(noise_multiplier=0.0, rounds=1, delta=1e-5) == math.inf
        one = epsilon(noise_multiplier=1.0, rounds=1, delta=1e-5)
        two = epsilon(noise_multiplier=1.0, rounds=2, delta=1e-5)
        assert 0 < one < two
        assert two == pytest.approx(7.08, abs=0.01)  # RDP, Gaussian z = 1, δ = 1e-5
        assert epsilon(noise_multiplier=4.0, rounds=2, delta=1e-5) < two

    def test_noise_is_calibrated_to_the_rule(self) -> None:
        secure = FederationConfig(mode="secure", noise_multiplier=2.0, clipping_norm=0.5)
        assert noise_std(secure, 4) == pytest.approx(2.0 * 0.5 / 4)
        krum = FederationConfig(mode="robust", rule="krum", noise_multiplier=2.0)
        assert noise_std(krum, 4) == pytest.approx(2.0 * 1.0 * 2.0)
        trimmed = FederationConfig(mode="robust", rule="trimmed-mean", trim_fraction=0.2)
        assert noise_std(trimmed, 10) == pytest.approx(2 * math.sqrt(10) / 6)

    def test_noise_has_the_requested_spread(self) -> None:
        zeros = [np.zeros((200, 200), np.float32)]
        noised = add_noise(zeros, std=0.5)
        assert float(noised[0].std()) == pytest.approx(0.5, rel=0.02)
        assert float(zeros[0].std()) == 0.0
        assert add_noise(zeros, std=0.0)[0].std() == 0.0


def test_a_device_dir_needs_its_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="kizuna device simulate"):
        DeviceManifest.read(tmp_path)
    DeviceManifest(device_id="d1", base_model="m").write(tmp_path / "d1")
    assert DeviceManifest.read(tmp_path / "d1") == DeviceManifest("d1", "m")


class TestExactAggregation:
    """mean(Bᵢ)·mean(Aᵢ) ≠ mean(BᵢAᵢ); with A frozen (FFA-LoRA) the mean of ΔB is exact."""

    # Two LoRA modules of rank 4 (B: out × r, A: r × in), as PEFT names them.
    TENSORS: ClassVar[dict[str, torch.Tensor]] = {
        "q.lora_A.weight": torch.zeros(4, 16),
        "q.lora_B.weight": torch.zeros(24, 4),
        "v.lora_A.weight": torch.zeros(4, 16),
        "v.lora_B.weight": torch.zeros(8, 4),
    }

    def _start_and_updates(self, sent: AdapterLayout) -> tuple[Arrays, list[Arrays]]:
        layout = AdapterLayout.of(self.TENSORS)
        rng = np.random.default_rng(0)
        start = [rng.normal(0, 0.1, s).astype(np.float32) for s in layout.shapes]
        updates = [
            [rng.normal(0, 0.05, s).astype(np.float32) for s in sent.shapes] for _ in range(5)
        ]
        return start, updates

    @pytest.mark.parametrize("factors", ["b", "both"])
    def test_the_relative_error_of_the_mean_update(self, factors: str) -> None:
        layout = AdapterLayout.of(self.TENSORS)
        sent = layout.sent(factors)  # type: ignore[arg-type]
        assert sent.names == (
            ("q.lora_B.weight", "v.lora_B.weight") if factors == "b" else layout.names
        )
        start, updates = self._start_and_updates(sent)
        mean = combine(updates, FederationConfig(mode="robust", rule="fedavg"))
        error = aggregation_error(
            layout,
            start,
            [full_update(layout, sent, u) for u in updates],
            full_update(layout, sent, mean),
        )
        if factors == "b":
            assert error <= 1e-6
        else:  # averaging A and B apart misses the cross terms of the devices' updates
            assert error > 1e-2

    def test_no_change_is_no_error(self) -> None:
        layout = AdapterLayout.of(self.TENSORS)
        start, _ = self._start_and_updates(layout)
        zero = [np.zeros(s, dtype=np.float32) for s in layout.shapes]
        assert aggregation_error(layout, start, [zero, zero], zero) == 0.0

"""The thresholds a candidate adapter must meet, per persona (settings ``gates``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GateThresholds(BaseModel):
    """Goals of the design (style, content, diversity, latency) and no-regression bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_style_accuracy: float = Field(default=0.80, ge=0, le=1)
    min_content_preservation: float = Field(
        default=0.85, ge=0, le=1, description="Share of outputs that keep facts and meaning."
    )
    max_loop_rate: float = Field(
        default=0.02, ge=0, le=1, description="Share of outputs repeating a 4-gram 3+ times."
    )
    max_leakage_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of outputs echoing the prompt."
    )
    min_distinct2_vs_rules: float = Field(
        default=1.3, ge=0, description="Candidate distinct-2 ÷ the rules teacher's."
    )
    max_latency_ms_cpu: float = Field(default=500.0, gt=0, description="p50, short transform.")
    max_latency_ms_gpu: float = Field(default=100.0, gt=0, description="p50, short transform.")
    max_content_drop_vs_stable: float = Field(
        default=0.02, ge=0, description="Content preservation the candidate may lose."
    )
    max_style_drop_quantized: float = Field(
        default=0.02, ge=0, description="Style accuracy the int8 variant may lose."
    )

"""Aggregation rules by name, and the two ways a round's updates are collected.

``robust`` mode combines the individual (validated, clipped) updates with a registered
rule; ``secure`` mode only ever sees the SecAgg+ sum, so its rule is the mean.
"""

from kizuna.federation.strategies.rules import RULES, AggregationRule, rule_named

__all__ = ["RULES", "AggregationRule", "rule_named"]

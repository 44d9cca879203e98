"""Kizuna: continuous-learning personality adapters on one base model."""

__version__ = "0.1.0"

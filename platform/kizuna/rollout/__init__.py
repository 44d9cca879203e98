"""Rollout: pure reconcile logic (desired + observed state → actions) and its local backend.

The Kubernetes operator (``kizuna_operator``) and the embedded backend (``local.py``)
run the same :func:`kizuna.rollout.reconcile.reconcile`; only how actions take effect
differs.
"""

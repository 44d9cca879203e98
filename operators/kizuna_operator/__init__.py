"""The kopf operator that reconciles Kizuna's custom resources on a cluster."""

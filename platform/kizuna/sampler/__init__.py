"""Active learning: choose the interactions the adapters were least sure of, spread out."""

"""Evaluation of adapters: style accuracy, content preservation, diversity."""

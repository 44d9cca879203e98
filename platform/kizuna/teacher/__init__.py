"""Teachers: they rewrite neutral inputs in a personality, to make training targets.

Every teacher follows the protocol in :mod:`kizuna.teacher.base` and is registered by a
short name in :mod:`kizuna.teacher.registry`: ``rules`` (deterministic, from the
profiles; the embedded default), ``prompted`` (the base model prompted with the
profile), ``openai`` (any OpenAI-compatible endpoint) and ``hf`` (a larger local model).
"""

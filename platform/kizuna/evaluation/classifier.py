"""The persona judge behind style accuracy.

A linear model (scikit-learn logistic regression) over hashed character 1–5-grams plus
word (and, in Chinese, single-character) unigrams and bigrams, so it reads Chinese and
English alike with no tokenizer and no vocabulary to store. Chosen by held-out accuracy
on the authored corpus while it was being written (four personas: char 1–3-grams alone
0.74 en / 0.83 zh, calling 0.63 / 0.98 of wrapped neutral inputs neutral; char 1–5 plus
words 0.76 / 0.80, 1.00 / 0.90 on five); on all six: 0.77 / 0.78 over seven classes,
0.98 / 0.98 of wrapped inputs neutral (``benchmarks/persona_quality.py`` prints it).

It learns the personas from the authored corpus only (:mod:`kizuna.datasets.persona_corpus`:
hand-written rewrites, never the output of a teacher it will score) plus the profiles'
hand-written examples, and the neutral inputs as a class of their own, so an output
that kept no personality is ``neutral`` rather than the nearest persona.

Wrappers are not a personality: every neutral training input is also shown with a
persona's stock phrases glued around it, unchanged inside (what the ``rules`` teacher
writes), labelled ``neutral``. So the judge has to find the persona inside the
sentence; a glued opener alone does not make it confident. Its weights are saved as
safetensors (never pickle) with the class names beside them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression

from kizuna.datasets.pairs import split_of
from kizuna.datasets.persona_corpus import LANGUAGES, authored_inputs, authored_rewrites
from kizuna.personas.schema import PersonaProfile
from kizuna.teacher.base import StyleRequest, language_of
from kizuna.teacher.rules import rewrite as glue_stock_phrases

NEUTRAL = "neutral"
_FEATURES = 2**18
#: Bumped when the training data or features change, so cached judges are retrained.
JUDGE_VERSION = 2


def _words(text: str) -> list[str]:
    # English words (with apostrophes) and every other non-space character on its own,
    # which for Chinese is its characters; then adjacent pairs of them.
    tokens = re.findall(r"[a-z']+|[^\sa-z']", text.lower())
    return tokens + [f"{a} {b}" for a, b in pairwise(tokens)]


class _Features:
    """Hashed character n-grams and word n-grams side by side: one sparse row a text."""

    def __init__(self) -> None:
        self._parts = [
            HashingVectorizer(
                analyzer="char", ngram_range=(1, 5), n_features=_FEATURES, alternate_sign=False
            ),
            HashingVectorizer(analyzer=_words, n_features=_FEATURES, alternate_sign=False),
        ]

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return sparse.hstack([part.transform(list(texts)) for part in self._parts]).tocsr()


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with their persona (or ``neutral``) labels."""

    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def of_language(self, language: str) -> LabelledTexts:
        """The texts of one language."""
        rows = [(t, y) for t, y in zip(self.texts, self.labels, strict=True)]
        kept = [(t, y) for t, y in rows if language_of(t) == language]
        return LabelledTexts([t for t, _ in kept], [y for _, y in kept])


def _wrapped(text: str, profiles: Sequence[PersonaProfile]) -> str:
    # One persona per input, by hash, at the strongest wrapping (opener + two closers).
    persona = profiles[int(hashlib.sha256(text.encode()).hexdigest(), 16) % len(profiles)]
    return glue_stock_phrases(StyleRequest(text, persona, 1.0))


def training_texts(profiles: Mapping[str, PersonaProfile]) -> tuple[LabelledTexts, LabelledTexts]:
    """Train and held-out texts, split by a hash of the neutral input (no input leaks).

    Held out: the authored rewrites and neutral inputs of the test split, unwrapped.
    """
    ordered = [profiles[p] for p in sorted(profiles)]
    rows: list[tuple[str, str, str]] = [
        (r.input, r.target, r.persona) for r in authored_rewrites(sorted(profiles))
    ]
    for language in LANGUAGES:
        for row in authored_inputs(language):
            rows.append((row.text, row.text, NEUTRAL))
            if split_of(row.text) == "train":
                rows.append((row.text, _wrapped(row.text, ordered), NEUTRAL))
    for profile in ordered:
        for example in profile.example_pairs():
            rows += [(example.input, example.target, profile.id)]
            rows += [(example.input, example.input, NEUTRAL)]
    train, test = LabelledTexts(), LabelledTexts()
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
        self._features = _Features()

    @classmethod
    def train(cls, data: LabelledTexts, *, regularisation: float = 32.0) -> PersonaClassifier:
        """Fit on labelled texts."""
        # Balanced: neutral has every input twice (plain and wrapped), a persona once.
        model = LogisticRegression(C=regularisation, max_iter=2000, class_weight="balanced")
        model.fit(_Features().transform(data.texts), data.labels)
        return cls([str(name) for name in model.classes_], model.coef_, model.intercept_)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), len(classes))`` class probabilities."""
        scores = self._features.transform(texts) @ self._weights.T + self._bias
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
    """A judge and how it did on the held-out split it never saw."""

    classifier: PersonaClassifier
    heldout_accuracy: float
    #: Per language: accuracy, the confusion matrix (true → predicted → count) and the
    #: share of wrapped neutral inputs (stock phrases glued on) it still calls neutral.
    heldout: dict[str, dict[str, object]]


def heldout_report(
    classifier: PersonaClassifier, test: LabelledTexts, profiles: Mapping[str, PersonaProfile]
) -> dict[str, dict[str, object]]:
    """Held-out accuracy, confusion matrix and wrapper rejection, per language."""
    ordered = [profiles[p] for p in sorted(profiles)]
    report: dict[str, dict[str, object]] = {}
    for language in LANGUAGES:
        data = test.of_language(language)
        confusion: dict[str, dict[str, int]] = {
            c: dict.fromkeys(classifier.classes, 0) for c in classifier.classes
        }
        for truth, guess in zip(data.labels, classifier.predict(data.texts), strict=True):
            confusion[truth][guess] += 1
        neutral = [t for t, y in zip(data.texts, data.labels, strict=True) if y == NEUTRAL]
        wrapped = classifier.predict([_wrapped(text, ordered) for text in neutral])
        report[language] = {
            "texts": len(data.texts),
            "accuracy": classifier.accuracy(data),
            "confusion": confusion,
            "wrapped_neutral_rejected": wrapped.count(NEUTRAL) / max(len(wrapped), 1),
        }
    return report


#: In every complete judge cache entry; a folder without it was left by an interrupted writer.
HELDOUT_FILE = "heldout.json"


def load_or_train(profiles: Mapping[str, PersonaProfile], cache_dir: Path) -> TrainedClassifier:
    """The judge for these profiles, trained once and cached under ``cache_dir``.

    The cache key covers the profiles, the corpus and :data:`JUDGE_VERSION`, so editing
    either retrains.
    """
    train, test = training_texts(profiles)
    digest = hashlib.sha256(
        json.dumps(
            [JUDGE_VERSION, train.texts, train.labels]
            + [p.model_dump(mode="json") for _, p in sorted(profiles.items())],
            sort_keys=True,
            ensure_ascii=False,
        ).encode("utf-8")
    ).hexdigest()[:16]
    directory = cache_dir / digest
    heldout_file = directory / HELDOUT_FILE
    if heldout_file.is_file():
        saved = json.loads(heldout_file.read_text())
        return TrainedClassifier(
            PersonaClassifier.load(directory), saved["accuracy"], saved["by_language"]
        )
    classifier = PersonaClassifier.train(train)
    accuracy = classifier.accuracy(test)
    by_language = heldout_report(classifier, test, profiles)
    _publish(directory, classifier, {"accuracy": accuracy, "by_language": by_language})
    return TrainedClassifier(classifier, accuracy, by_language)


def _publish(directory: Path, classifier: PersonaClassifier, heldout: dict[str, object]) -> None:
    """Write the cache entry beside ``directory``, then rename it into place: several
    processes (a retrain's workers, installs sharing one cache) may train the same set at
    once, and none may read a half-written one."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    classifier.save(staging)
    (staging / HELDOUT_FILE).write_text(json.dumps(heldout))
    if directory.exists() and not (directory / HELDOUT_FILE).is_file():
        shutil.rmtree(directory, ignore_errors=True)  # left by an interrupted older writer
    try:
        staging.rename(directory)
    except OSError:  # another process published the same training set first
        shutil.rmtree(staging, ignore_errors=True)

"""Evaluation metrics: the persona classifier, style accuracy, content, diversity."""

from pathlib import Path

import numpy as np
import pytest

from kizuna.datasets.similarity import ContentSimilarity
from kizuna.evaluation.classifier import NEUTRAL, PersonaClassifier, training_texts
from kizuna.evaluation.metrics import content_preservation, distinct_n, style_accuracy
from kizuna.personas import load_profiles

PROFILES = load_profiles()


@pytest.fixture(scope="module")
def classifier_and_heldout() -> tuple[PersonaClassifier, object]:
    train, test = training_texts(PROFILES, sentences_per_language=120)
    return PersonaClassifier.train(train), test


def test_the_classifier_is_accurate_on_held_out_inputs(classifier_and_heldout) -> None:
    classifier, test = classifier_and_heldout
    assert set(classifier.classes) == {*PROFILES, NEUTRAL}
    assert len(test.texts) > 100 and classifier.accuracy(test) >= 0.9


def test_hand_written_examples_and_neutral_text_are_told_apart(classifier_and_heldout) -> None:
    classifier, _ = classifier_and_heldout
    texts = [
        "Hmph, it's not like I wanted to walk you home, baka.",
        "Yay! Let's go to the beach tomorrow, I can't wait!",
        "The library will be closed on Monday for the public holiday.",
    ]
    assert classifier.predict(texts) == ["tsundere", "cheerful", NEUTRAL]
    assert style_accuracy(classifier, texts, "tsundere") == pytest.approx(1 / 3)
    tsundere = classifier.persona_score(texts, "tsundere")
    assert tsundere[0] > 0.5 > tsundere[2]


def test_the_classifier_round_trips_through_safetensors(
    classifier_and_heldout, tmp_path: Path
) -> None:
    classifier, test = classifier_and_heldout
    classifier.save(tmp_path / "clf")
    assert not list((tmp_path / "clf").glob("*.pkl"))
    loaded = PersonaClassifier.load(tmp_path / "clf")
    assert loaded.classes == classifier.classes
    np.testing.assert_allclose(
        loaded.probabilities(test.texts[:50]), classifier.probabilities(test.texts[:50]), atol=1e-6
    )


def test_distinct_n_counts_words_in_english_and_characters_in_chinese() -> None:
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["好好学习"], 1) == pytest.approx(3 / 4)
    assert distinct_n([], 2) == 0.0


def test_content_preservation_rewards_keeping_the_input() -> None:
    similarity = ContentSimilarity()
    inputs = ["The train leaves at eight in the morning.", "火车早上八点出发。"]
    kept = ["Hmph. The train leaves at eight in the morning.", "哼，火车早上八点出发。"]
    lost = ["Hmph. I like cats.", "哼，我喜欢猫。"]
    assert content_preservation(similarity, inputs, kept) > 0.6
    assert content_preservation(similarity, inputs, lost) < 0.4

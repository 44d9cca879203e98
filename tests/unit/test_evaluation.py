"""Evaluation: the persona judge, style accuracy, content, loops, leakage, diversity."""

import json
from pathlib import Path

import numpy as np
import pytest

from kizuna.datasets.content import ContentCheck
from kizuna.evaluation.classifier import (
    NEUTRAL,
    PersonaClassifier,
    _publish,
    heldout_report,
    training_texts,
)
from kizuna.evaluation.metrics import (
    content_preservation,
    distinct_n,
    leakage_rate,
    length_ratio,
    loop_rate,
    loops,
    style_accuracy,
)
from kizuna.personas import load_profiles
from kizuna.teacher.base import StyleRequest
from kizuna.teacher.rules import RulesTeacher

PROFILES = load_profiles()


@pytest.fixture(scope="module")
def judge_and_heldout() -> tuple[PersonaClassifier, object]:
    train, test = training_texts(PROFILES)
    return PersonaClassifier.train(train), test


def test_the_judge_never_trains_on_a_held_out_input(judge_and_heldout) -> None:
    from kizuna.datasets.pairs import split_of
    from kizuna.datasets.persona_corpus import authored_rewrites

    train, test = training_texts(PROFILES)
    held_out_targets = {r.target for r in authored_rewrites(split="test")}
    assert held_out_targets and not held_out_targets & set(train.texts)
    assert all(split_of(r.input) == "test" for r in authored_rewrites(split="test"))
    assert set(test.labels) == {*PROFILES, NEUTRAL}


def test_the_judge_is_accurate_on_held_out_text_in_both_languages(judge_and_heldout) -> None:
    classifier, test = judge_and_heldout
    assert set(classifier.classes) == {*PROFILES, NEUTRAL}
    report = heldout_report(classifier, test, PROFILES)
    for language in ("en", "zh"):
        table = report[language]
        # Seven classes (chance 0.14); subtle rewrites are close to neutral by design.
        assert table["texts"] > 250 and table["accuracy"] >= 0.65, (language, table)
        confusion = table["confusion"]
        assert sum(map(sum, (row.values() for row in confusion.values()))) == table["texts"]


def test_a_stock_phrase_glued_on_a_neutral_sentence_is_not_the_persona(
    judge_and_heldout,
) -> None:
    classifier, test = judge_and_heldout
    neutral = [t for t, y in zip(test.texts, test.labels, strict=True) if y == NEUTRAL]
    for persona in PROFILES.values():
        wrapped = RulesTeacher().relabel([StyleRequest(t, persona, 1.0) for t in neutral])
        confident = [p for p in classifier.persona_score(wrapped, persona.id) if p >= 0.5]
        assert len(confident) <= 0.1 * len(wrapped), (persona.id, len(confident), len(wrapped))


def test_a_persona_without_any_listed_marker_is_recognised(judge_and_heldout) -> None:
    classifier, _ = judge_and_heldout
    texts = {
        "tsundere": [
            "I fixed your code. It was so easy anyone could have done it, so don't go "
            "thinking you owe me.",
            "文件我放你桌上了。又不是特意给你拿的，顺路而已，你可别想多。",
        ],
        "cool": ["Meeting. Thursday. 3 pm. Be there.", "会议。周四。下午3点。到场。"],
    }
    for persona, rewrites in texts.items():
        markers = [
            m.lower() for m in (*PROFILES[persona].markers.en, *PROFILES[persona].markers.zh)
        ]
        assert not any(m in text.lower() for text in rewrites for m in markers)
        assert classifier.predict(rewrites) == [persona] * len(rewrites)


def test_style_accuracy_counts_the_judges_verdicts(judge_and_heldout) -> None:
    classifier, _ = judge_and_heldout
    texts = [
        "It's not like I waited for you or anything! I just happened to be here, idiot.",
        "The library will be closed on Monday for the public holiday.",
    ]
    assert style_accuracy(classifier, texts, "tsundere") == pytest.approx(1 / 2)
    tsundere = classifier.persona_score(texts, "tsundere")
    assert tsundere[0] > 0.5 > tsundere[1]


def test_the_judge_round_trips_through_safetensors(judge_and_heldout, tmp_path: Path) -> None:
    classifier, test = judge_and_heldout
    classifier.save(tmp_path / "clf")
    assert not list((tmp_path / "clf").glob("*.pkl"))
    loaded = PersonaClassifier.load(tmp_path / "clf")
    assert loaded.classes == classifier.classes
    np.testing.assert_allclose(
        loaded.probabilities(test.texts[:50]), classifier.probabilities(test.texts[:50]), atol=1e-6
    )


def test_a_cached_judge_is_published_whole_when_two_writers_race(tmp_path: Path) -> None:
    tiny = PersonaClassifier([NEUTRAL, "cool"], np.zeros((2, 4)), np.zeros(2))
    entry = tmp_path / "judges" / "0123abcd"
    entry.mkdir(parents=True)
    (entry / "classes.json").write_text("[]")  # an interrupted writer's leftovers
    _publish(entry, tiny, {"accuracy": 1.0})
    _publish(entry, tiny, {"accuracy": 0.5})  # the race's loser keeps nothing
    assert json.loads((entry / "heldout.json").read_text()) == {"accuracy": 1.0}
    assert PersonaClassifier.load(entry).classes == [NEUTRAL, "cool"]
    assert [p.name for p in entry.parent.iterdir()] == ["0123abcd"]


def test_distinct_n_counts_words_in_english_and_characters_in_chinese() -> None:
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["好好学习"], 1) == pytest.approx(3 / 4)
    assert distinct_n([], 2) == 0.0


def test_loops_leakage_and_length_are_counted() -> None:
    looping = "Oh, right, a bouncy castle… oh, right, a bouncy castle… oh, right, a bouncy castle…"
    assert loops(looping) and loops("我就是嘿吧，我就是嘿吧，我就是嘿吧，")
    assert not loops("Oh, right, a bouncy castle. Oh, right, a bouncy castle.")
    assert loop_rate([looping, "Fine."]) == pytest.approx(0.5)
    assert leakage_rate(["Rewrite in your own voice: the train leaves.", "Fine."]) == 0.5
    assert length_ratio(["a b"], ["a b c d"]) == pytest.approx(2.0)
    assert length_ratio(["火车八点"], ["火车八点出发"]) == pytest.approx(1.5)


def test_content_check_passes_persona_rewrites_and_fails_changed_facts() -> None:
    check = ContentCheck()
    inputs = [
        "The train leaves at 8:15 on Friday, so Maria can't be late.",
        "王磊的航班是下午3点落地，他不需要我们去接。",
    ]
    in_persona = [
        "Hmph, the train leaves at 8:15 on Friday. So Maria can't be late, obviously!",
        "哼，王磊的航班下午3点落地啦，他才不需要我们去接呢。",
    ]
    changed = [
        # a number, a name and a negation changed, style otherwise identical
        "Hmph, the train leaves at 9:15 on Friday. So Maria can't be late, obviously!",
        "哼，李娜的航班下午3点落地啦，他才不需要我们去接呢。",
        "Hmph, the train leaves at 8:15 on Friday. So Maria can be late, obviously!",
    ]
    assert [v.kept for v in check.verdicts(list(zip(inputs, in_persona, strict=True)))] == [
        True,
        True,
    ]
    verdicts = check.verdicts(list(zip([inputs[0], inputs[1], inputs[0]], changed, strict=True)))
    assert [v.kept for v in verdicts] == [False, False, False]
    assert "number 8:15 missing" in verdicts[0].lost and "name 王磊 missing" in verdicts[1].lost
    assert any(item.startswith("negation dropped") for item in verdicts[2].lost)
    # A denial beside the statement is the persona; negating the statement is not.
    denial, flip = check.verdicts(
        [
            ("He was equal to the task.", "He was equal to the task. Not that I care, idiot."),
            ("He was equal to the task.", "He wasn't equal to the task, idiot."),
        ]
    )
    assert denial.kept and flip.lost == ["negation added to 'was equal'"]
    off_topic = ["I like cats.", "我喜欢猫。"]
    assert content_preservation(check, inputs, in_persona) == 1.0
    assert content_preservation(check, inputs, off_topic) == 0.0

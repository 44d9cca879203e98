"""The active-learning sampler: consent, uncertainty, diversity, budgets, scrubbing."""

import pytest

from kizuna.sampler.diversity import cosine, ngram_vector
from kizuna.sampler.scrub import scrub
from kizuna.sampler.selection import Candidate, SamplerConfig, select


def _candidate(i: int, text: str, entropy: float, *, persona="tsundere", consent=True) -> Candidate:
    return Candidate(
        interaction_id=i,
        persona=persona,
        text=text,
        entropy_mean=entropy,
        entropy_max=entropy * 2,
        consent=consent,
        strength=0.6,
    )


def test_non_consented_rows_are_never_selected() -> None:
    pool = [_candidate(i, f"question {i}", 5.0 - i * 0.1, consent=i % 2 == 1) for i in range(20)]
    picks = select(pool, SamplerConfig(per_persona_budget=50, global_budget=50))
    assert picks and all(p.interaction_id % 2 == 1 for p in picks)


def test_without_diversity_the_most_uncertain_are_picked_in_order() -> None:
    pool = [
        _candidate(i, f"topic {i} is unrelated to {i * 7}", (i * 37) % 23 / 4) for i in range(40)
    ]
    picks = select(pool, SamplerConfig(per_persona_budget=5, diversity=0.0))
    expected = sorted(pool, key=lambda c: -c.entropy_mean)[:5]
    assert [p.interaction_id for p in picks] == [c.interaction_id for c in expected]
    assert [p.rank for p in picks] == [1, 2, 3, 4, 5]
    assert "mean_entropy" in picks[0].reason


TOPICS = [
    "Can you book a table for two at the Italian place tonight?",
    "我的快递什么时候能到？已经等了三天了。",
    "How do I reset my router when the light keeps blinking orange?",
    "请帮我把这段话翻译成英文，谢谢。",
    "What should I cook for dinner if I only have eggs and rice?",
    "明天北京会下雨吗？我要不要带伞？",
    "Remind me to call my sister on Sunday afternoon.",
    "这个月的电费为什么比上个月高这么多？",
    "Is it safe to run a half marathon two weeks after a cold?",
    "帮我写一条生日祝福，给我最好的朋友。",
]


def test_diversity_covers_more_topics_than_top_k_under_planted_near_duplicates() -> None:
    pool = []
    for t, text in enumerate(TOPICS):
        # Five near-duplicates per topic; the first topics are the most uncertain, so
        # plain top-k spends the whole budget on two topics.
        for v in range(5):
            variant = text.replace("?", f" (v{v})?").replace("？", f"（{v}）？") + " " * v
            pool.append(_candidate(t * 10 + v, variant, 4.0 - t * 0.3 - v * 0.01))
    topic_of = {c.interaction_id: c.interaction_id // 10 for c in pool}
    top_k = select(pool, SamplerConfig(per_persona_budget=10, diversity=0.0))
    default = select(pool, SamplerConfig(per_persona_budget=10))
    wide = select(pool, SamplerConfig(per_persona_budget=10, diversity=0.8))

    def covered(picks) -> int:
        return len({topic_of[p.interaction_id] for p in picks})

    assert covered(top_k) == 2
    assert covered(default) >= 8  # the default λ still spends a little on duplicates
    assert covered(wide) == 10
    assert all(p.max_similarity < 0.5 for p in wide)


def test_per_persona_and_global_budgets() -> None:
    pool = [
        _candidate(
            p * 100 + i, f"{persona} asks thing number {i * 13}", 1 + i / 10, persona=persona
        )
        for p, persona in enumerate(["tsundere", "cool", "gentle"])
        for i in range(30)
    ]
    per = select(pool, SamplerConfig(per_persona_budget=4, global_budget=100))
    assert len(per) == 12
    assert {
        persona: sum(p.persona == persona for p in per)
        for persona in ("tsundere", "cool", "gentle")
    } == {"tsundere": 4, "cool": 4, "gentle": 4}
    capped = select(pool, SamplerConfig(per_persona_budget=4, global_budget=7))
    assert len(capped) == 7
    assert {p.persona for p in capped if p.rank == 1} == {"tsundere", "cool", "gentle"}


def test_margin_scoring_picks_the_most_hesitant_and_skips_unmeasured_rows() -> None:
    pool = [
        Candidate(
            interaction_id=i,
            persona="cool",
            text=f"unrelated question number {i * 97}",
            entropy_mean=1.0,
            entropy_max=1.0,
            consent=True,
            strength=0.6,
            margin_mean=None if i == 0 else i / 10,
        )
        for i in range(8)
    ]
    picks = select(pool, SamplerConfig(per_persona_budget=3, score="margin", diversity=0.0))
    assert [p.interaction_id for p in picks] == [1, 2, 3]
    assert picks[0].score == pytest.approx(0.9) and picks[0].reason.startswith("margin")


@pytest.mark.parametrize(
    "kwargs", [{"per_persona_budget": -1}, {"diversity": 1.5}, {"score": "loss"}]
)
def test_bad_configs_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        SamplerConfig(**kwargs)


def test_ngram_similarity_sees_near_duplicates_in_both_languages() -> None:
    a, b = ngram_vector("我的快递什么时候能到？"), ngram_vector("我的快递什么时候能到呢？")
    c = ngram_vector("Remind me to call my sister.")
    assert cosine(a, b) > 0.7 > 0.1 > cosine(a, c)
    assert cosine(c, c) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "leaked", "placeholder"),
    [
        ("mail me at jane.doe+x@example.co.uk please", "jane.doe", "[EMAIL]"),
        ("call +1 415-555-0199 tonight", "555-0199", "[PHONE]"),
        ("我的电话是13812345678，晚上打", "13812345678", "[PHONE]"),
        ("身份证号11010519491231002X已提交", "11010519491231002X", "[ID]"),
        ("card 4111 1111 1111 1111 expires", "4111 1111", "[CARD]"),
        ("account 123456789012", "123456789012", "["),
    ],
)
def test_personal_data_is_scrubbed(text: str, leaked: str, placeholder: str) -> None:
    cleaned = scrub(text)
    assert leaked not in cleaned and placeholder in cleaned


def test_scrubbing_keeps_ordinary_text_and_small_numbers() -> None:
    text = "The train leaves at 8:30 on platform 12; tickets cost 45 yuan. 火车八点出发。"
    assert scrub(text) == text


def test_the_pool_comes_from_the_store_scrubbed(sessions) -> None:
    from kizuna.sampler.pool import candidates
    from kizuna.store.db import transaction
    from kizuna.store.interactions import InteractionRecord, log_interaction

    def record(key: str, **overrides) -> InteractionRecord:
        values = dict(
            public_id=key,
            request_text="call me on 13812345678",
            output_text="ok",
            strength=1.0,
            adapter_versions={"cool": 1},
            token_entropies=[2.0, 1.0],
            token_margins=[0.5, 0.1],
            latency_ms=5.0,
            persona="cool",
            consent=True,
        )
        return InteractionRecord(**{**values, **overrides})

    with transaction(sessions) as session:
        kept = log_interaction(session, record=record("a")).id
        log_interaction(session, record=record("b", consent=False))
        log_interaction(session, record=record("c", persona=None, mix={"cool": 0.5, "sly": 0.5}))
    with sessions() as session:
        pool = candidates(session)
    assert [(c.interaction_id, c.text, c.entropy_mean) for c in pool] == [
        (kept, "call me on [PHONE]", 1.5)
    ]
    assert pool[0].margin_mean == pytest.approx(0.3)

"""The candidate pool: consented, not-yet-labelled interactions, personal data scrubbed."""

from __future__ import annotations

from sqlalchemy.orm import Session

from kizuna.sampler.scrub import scrub
from kizuna.sampler.selection import Candidate
from kizuna.store.interactions import unlabelled_consented


def candidates(
    session: Session, *, after_id: int = 0, persona: str | None = None
) -> list[Candidate]:
    """Single-persona interactions that may be labelled, texts already scrubbed.

    Fused (mixed-persona) requests are left out: their output belongs to no one persona.
    """
    return [
        Candidate(
            interaction_id=row.id,
            persona=row.persona,
            text=scrub(row.request_text),
            entropy_mean=row.entropy_mean,
            entropy_max=row.entropy_max,
            consent=row.consent,
            strength=row.strength,
            margin_mean=row.margin_mean,
        )
        for row in unlabelled_consented(session, after_id=after_id, persona=persona)
        if row.persona is not None
    ]

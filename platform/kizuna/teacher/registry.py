"""Teachers by short name.

Modules are imported only when their teacher is built, so choosing ``rules`` never
loads torch and choosing ``openai`` never loads a model.
"""

from __future__ import annotations

import importlib

from kizuna.config import Settings
from kizuna.teacher.base import Teacher

DEFAULT_TEACHER = "rules"

_BUILDERS = {
    "rules": "kizuna.teacher.rules",
    "corpus": "kizuna.teacher.corpus",
    "prompted": "kizuna.teacher.prompted",
    "openai": "kizuna.teacher.openai_compatible",
    "hf": "kizuna.teacher.hf",
}

#: Teachers that can give logits for a KL term (``hf`` only when it shares the
#: student's vocabulary); the others teach through their text alone.
LOGIT_TEACHERS = frozenset({"prompted", "hf"})


def teacher_names() -> list[str]:
    """Every registered teacher's name."""
    return sorted(_BUILDERS)


def build_teacher(name: str, settings: Settings) -> Teacher:
    """The teacher registered as ``name``, configured from ``settings``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(teacher_names())}")
    teacher: Teacher = importlib.import_module(_BUILDERS[name]).build(settings)
    return teacher

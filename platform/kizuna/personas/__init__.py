"""Personality profiles: the schema and the loader."""

from kizuna.personas.loader import (
    ProfileError,
    UnknownPersonaError,
    get_profile,
    load_profile,
    load_profiles,
)
from kizuna.personas.schema import INTENSITY_STRENGTH, PersonaProfile

__all__ = [
    "INTENSITY_STRENGTH",
    "PersonaProfile",
    "ProfileError",
    "UnknownPersonaError",
    "get_profile",
    "load_profile",
    "load_profiles",
]

"""Finding, reading and validating personality profiles.

Shipped profiles live beside this module; users add or override profiles by dropping
``<id>.yaml`` into the personas directory of their settings. Errors name the file and
the field so a person can fix the YAML without reading code.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import ValidationError

from kizuna.personas.schema import PersonaProfile

SHIPPED_DIR = Path(__file__).parent / "profiles"


class ProfileError(ValueError):
    """A profile file that cannot be read or does not match the schema."""


class UnknownPersonaError(KeyError):
    """A persona id that no profile defines."""

    def __str__(self) -> str:
        return str(self.args[0])


def load_profile(path: Path) -> PersonaProfile:
    """Read one profile file, raising :class:`ProfileError` with a readable reason."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level")
    try:
        profile = PersonaProfile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ProfileError(f"{path}: {problems}") from exc
    if profile.id != path.stem:
        raise ProfileError(f"{path}: id {profile.id!r} must match the file name {path.stem!r}")
    return profile


def profile_files(user_dir: Path | None = None) -> dict[str, Path]:
    """Profile files by id; a user file replaces the shipped file of the same id."""
    files = {path.stem: path for path in sorted(SHIPPED_DIR.glob("*.yaml"))}
    if user_dir is not None and user_dir.is_dir():
        files.update({path.stem: path for path in sorted(user_dir.glob("*.yaml"))})
    return files


def load_profiles(user_dir: Path | None = None) -> dict[str, PersonaProfile]:
    """Every profile, shipped and user-added, validated."""
    return {pid: load_profile(path) for pid, path in profile_files(user_dir).items()}


def unknown_persona(persona_id: str, known: Iterable[str]) -> UnknownPersonaError:
    """The error for a persona id no profile defines, listing the ids that exist."""
    listed = ", ".join(sorted(known)) or "none"
    return UnknownPersonaError(f"unknown persona {persona_id!r} (known: {listed})")


def get_profile(persona_id: str, user_dir: Path | None = None) -> PersonaProfile:
    """One profile by id, or :class:`UnknownPersonaError` listing the known ids."""
    files = profile_files(user_dir)
    if persona_id not in files:
        raise unknown_persona(persona_id, files)
    return load_profile(files[persona_id])

from pathlib import Path

import pytest
import yaml

from kizuna.personas import (
    ProfileError,
    UnknownPersonaError,
    get_profile,
    load_profile,
    load_profiles,
)
from kizuna.personas.loader import SHIPPED_DIR

SHIPPED = {"tsundere", "cheerful", "airhead", "sly", "cool", "gentle"}


def test_the_six_personalities_ship_and_validate() -> None:
    profiles = load_profiles()
    assert set(profiles) >= SHIPPED
    for profile in profiles.values():
        assert len(profile.examples.zh) >= 10 and len(profile.examples.en) >= 10
        assert {"subtle", "standard", "exaggerated"} == set(profile.intensity)
        assert profile.name.zh and profile.name.en


def test_every_intensity_level_has_examples_in_both_languages() -> None:
    for profile in load_profiles().values():
        for language in ("zh", "en"):
            levels = {ex.intensity for ex in profile.example_pairs(language)}  # type: ignore[arg-type]
            assert levels == {"subtle", "standard", "exaggerated"}, (profile.id, language)


def test_most_targets_carry_a_marker_of_their_persona() -> None:
    # The markers are what the rules teacher and the classifier key on; a profile whose
    # own examples rarely use them is describing a different voice.
    for profile in load_profiles().values():
        for language in ("zh", "en"):
            markers = [m.lower().strip(".") for m in getattr(profile.markers, language)]
            pairs = profile.example_pairs(language)  # type: ignore[arg-type]
            marked = sum(any(m in ex.target.lower() for m in markers) for ex in pairs)
            assert marked / len(pairs) >= 0.5, (profile.id, language, marked)


def _shipped_raw(persona: str) -> dict:
    return yaml.safe_load((SHIPPED_DIR / f"{persona}.yaml").read_text(encoding="utf-8"))


def _write(directory: Path, raw: dict) -> Path:
    path = directory / f"{raw['id']}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_a_user_profile_is_added_and_can_replace_a_shipped_one(tmp_path: Path) -> None:
    added = {**_shipped_raw("gentle"), "id": "butler"}
    _write(tmp_path, added)
    replaced = _shipped_raw("cool")
    replaced["name"] = {"zh": "冰山", "en": "Iceberg"}
    _write(tmp_path, replaced)
    profiles = load_profiles(tmp_path)
    assert "butler" in profiles
    assert profiles["cool"].name.en == "Iceberg"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw["examples"].update(en=raw["examples"]["en"][:3]), "examples.en"),
        (lambda raw: raw["intensity"].pop("subtle"), "missing level"),
        (lambda raw: raw["name"].pop("zh"), "name.zh"),
        (lambda raw: raw.update(colour="red"), "colour"),
        (lambda raw: raw["examples"]["zh"][0].update(intensity="extreme"), "intensity"),
    ],
)
def test_invalid_profiles_name_the_file_and_field(tmp_path: Path, mutate, message: str) -> None:
    raw = _shipped_raw("tsundere")
    mutate(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(ProfileError, match=message) as caught:
        load_profile(path)
    assert str(path) in str(caught.value)


def test_id_must_match_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(_shipped_raw("sly"), allow_unicode=True), encoding="utf-8")
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profile(path)


def test_unreadable_yaml_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: [unclosed\n")
    with pytest.raises(ProfileError, match="cannot read YAML"):
        load_profile(path)


def test_unknown_persona_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPersonaError, match="known: airhead, cheerful"):
        get_profile("pirate")

from pathlib import Path

import pytest

from kizuna.artifacts import (
    ArtifactIntegrityError,
    directory_sha256,
    fetch_directory,
    publish_directory,
)


def _adapter_dir(root: Path, payload: bytes = b"weights") -> Path:
    root.mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(payload)
    (root / "adapter_config.json").write_text('{"r": 16}')
    return root


def test_publish_then_fetch_round_trips_with_the_recorded_digest(tmp_path: Path) -> None:
    source = _adapter_dir(tmp_path / "src")
    published = publish_directory(source, root_url=(tmp_path / "store").as_uri(), persona="cool")
    assert published.sha256 == directory_sha256(source)
    assert published.url.endswith(f"/cool/{published.sha256}")
    local = fetch_directory(published.url, sha256=published.sha256, cache_dir=tmp_path / "cache")
    assert (local / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (local / ".complete").exists()


def test_publishing_the_same_content_twice_is_one_artifact(tmp_path: Path) -> None:
    root = (tmp_path / "store").as_uri()
    first = publish_directory(_adapter_dir(tmp_path / "a"), root_url=root, persona="cool")
    second = publish_directory(_adapter_dir(tmp_path / "b"), root_url=root, persona="cool")
    assert first == second


def test_digest_covers_names_and_bytes(tmp_path: Path) -> None:
    base = directory_sha256(_adapter_dir(tmp_path / "a"))
    assert directory_sha256(_adapter_dir(tmp_path / "b", b"weightz")) != base
    renamed = _adapter_dir(tmp_path / "c")
    (renamed / "adapter_config.json").rename(renamed / "config.json")
    assert directory_sha256(renamed) != base


def test_a_corrupted_artifact_is_refused(tmp_path: Path) -> None:
    published = publish_directory(
        _adapter_dir(tmp_path / "src"), root_url=(tmp_path / "store").as_uri(), persona="sly"
    )
    stored = Path(published.url.removeprefix("file://")) / "adapter_model.safetensors"
    stored.write_bytes(b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="corrupted"):
        fetch_directory(published.url, sha256=published.sha256, cache_dir=tmp_path / "cache")


def test_a_tampered_cache_copy_is_refused(tmp_path: Path) -> None:
    published = publish_directory(
        _adapter_dir(tmp_path / "src"), root_url=(tmp_path / "store").as_uri(), persona="sly"
    )
    local = fetch_directory(published.url, sha256=published.sha256, cache_dir=tmp_path / "cache")
    (local / "adapter_config.json").write_text("{}")
    with pytest.raises(ArtifactIntegrityError):
        fetch_directory(published.url, sha256=published.sha256, cache_dir=tmp_path / "cache")


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    source = _adapter_dir(tmp_path / "src")
    (source / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ArtifactIntegrityError, match="safetensors"):
        publish_directory(source, root_url=(tmp_path / "store").as_uri(), persona="cool")


def test_a_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactIntegrityError, match="does not exist"):
        fetch_directory((tmp_path / "nope").as_uri(), sha256="0" * 64, cache_dir=tmp_path / "c")

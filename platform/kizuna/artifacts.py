"""Adapter artifacts: PEFT directories of safetensors under an fsspec URL, sha256-checked.

An artifact is addressed by its content (``<root>/<persona>/<sha256>``), so publishing
the same adapter twice is a no-op and a published artifact never changes. The digest
covers every file name and byte; it is recorded in the store when the adapter is
registered and checked whenever the adapter is loaded, so a corrupted or swapped
artifact is refused instead of served.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fsspec

# Pickle-based weight formats can run code on load; artifacts must be safetensors.
_FORBIDDEN_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
_CHUNK = 1 << 20


class ArtifactIntegrityError(RuntimeError):
    """An artifact whose content does not match its recorded sha256, or is unsafe."""


@dataclass(frozen=True)
class PublishedArtifact:
    """Where an artifact was written and the digest to record for it."""

    url: str
    sha256: str


def directory_sha256(directory: Path) -> str:
    """A digest over every file's relative path and bytes, independent of walk order."""
    digest = hashlib.sha256()
    files = sorted(path for path in directory.rglob("*") if path.is_file())
    if not files:
        raise ArtifactIntegrityError(f"{directory} holds no files")
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of one file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_safe(directory: Path) -> None:
    unsafe = [p.name for p in directory.rglob("*") if p.suffix in _FORBIDDEN_SUFFIXES]
    if unsafe:
        raise ArtifactIntegrityError(
            f"{directory} holds pickle-format weights {unsafe}; only safetensors are accepted"
        )


def publish_directory(local_dir: Path, *, root_url: str, persona: str) -> PublishedArtifact:
    """Copy a local adapter directory under ``root_url`` and return its URL and digest."""
    _check_safe(local_dir)
    sha256 = directory_sha256(local_dir)
    url = f"{root_url.rstrip('/')}/{persona}/{sha256}"
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(f"{path}/.complete"):
        fs.makedirs(path, exist_ok=True)
        fs.put(f"{local_dir}/", path, recursive=True)
        # The marker is written last: a crash mid-copy leaves no artifact that looks whole.
        fs.pipe_file(f"{path}/.complete", sha256.encode())
    return PublishedArtifact(url=url, sha256=sha256)


def fetch_directory(url: str, *, sha256: str, cache_dir: Path) -> Path:
    """A verified local copy of the artifact at ``url``; a digest mismatch is refused."""
    local = cache_dir / sha256
    if not local.is_dir():
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.exists(path):
            raise ArtifactIntegrityError(f"artifact {url} does not exist")
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".fetch-"))
        try:
            fs.get(f"{path}/", f"{staging}/", recursive=True)
            (staging / ".complete").unlink(missing_ok=True)
            try:
                staging.rename(local)
            except OSError:
                # Another process (a second training worker) fetched it first: keep theirs.
                if not local.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _check_safe(local)
    actual = directory_sha256(local)
    if actual != sha256:
        raise ArtifactIntegrityError(
            f"artifact {url} is corrupted: sha256 {actual} != recorded {sha256}; refusing to load"
        )
    return local

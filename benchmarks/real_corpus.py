"""Real text for the benchmarks, read from the shared evaluation data (never copied here).

HotpotQA haystacks give documents with questions and gold evidence; QMSum meeting turns and
HotpotQA paragraphs give many short documents for corpus-scale indexing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from s3_retriever import S3Retriever
from s3_retriever.bulk import SourceDocument
from s3_retriever.eval.data import EvalExample, default_data_dir, load_hotpotqa_haystacks

DEFAULT_DATA = "../shared/data"


def data_dir(given: str | None) -> Path:
    """The evaluation data folder: ``given``, else the project's default location."""
    found = Path(given) if given else default_data_dir() or Path(DEFAULT_DATA)
    if not (found / "hotpotqa_dev_distractor").is_dir():
        raise SystemExit(
            f"no evaluation data in {found}: pass --data DIR (see ../shared/data/README.md)"
        )
    return found


def quiet_retriever(sae_path: str | None = None) -> S3Retriever:
    """The bundled model with a bundle of SAEs, without scan progress bars."""
    return quiet(S3Retriever.from_pretrained(sae_path=sae_path))


def quiet(retriever: S3Retriever) -> S3Retriever:
    """``retriever`` with its scan progress bars turned off."""
    retriever.scanner.config = dataclasses.replace(retriever.scanner.config, show_progress=False)
    return retriever


def haystacks(folder: Path, n: int, words: int = 3000) -> list[EvalExample]:
    """``n`` HotpotQA haystacks of about ``words`` words, one document each."""
    return load_hotpotqa_haystacks(folder, n_questions=n, target_words=words)


def short_documents(folder: Path, limit: int) -> Iterator[SourceDocument]:
    """Up to ``limit`` short real documents: QMSum meeting turns (about 25 tokens each), then
    unique HotpotQA paragraphs (about 150)."""
    count = 0
    with open(folder / "qmsum_val" / "val.jsonl") as handle:
        for meeting_no, line in enumerate(handle):
            for turn_no, turn in enumerate(json.loads(line)["meeting_transcripts"]):
                if count >= limit:
                    return
                text = f"{turn['speaker']}: {turn['content']}"
                yield SourceDocument(f"qmsum:{meeting_no}:{turn_no}", text, {"set": "qmsum"})
                count += 1
    seen: set[tuple[str, str]] = set()
    with open(folder / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl") as handle:
        for line in handle:
            for context in json.loads(line)["contexts"]:
                key = (context["title"], context["paragraph_text"])
                if key in seen:
                    continue
                if count >= limit:
                    return
                seen.add(key)
                text = f"{context['title']}\n{context['paragraph_text']}"
                yield SourceDocument(f"hotpotqa:{len(seen)}", text, {"set": "hotpotqa"})
                count += 1

"""Evaluation sets with gold evidence as exact character ranges.

Every loader reads the shared evaluation data (see ``../shared/data/README.md`` from the project
root) from a folder given as an argument and returns :class:`EvalExample` records. Nothing is
cached or copied: the files are small enough to parse on every call.

Gold evidence is a list of ``(document index, start_char, end_char)`` ranges into
``EvalExample.documents``, half-open like Python slices, so
``documents[d][start:end]`` is exactly the evidence text.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_DIR_ENV",
    "EvalExample",
    "LEVAL_TASKS",
    "default_data_dir",
    "load_hotpotqa_haystacks",
    "load_kv_retrieval",
    "load_leval",
    "load_qmsum",
]

DATA_DIR_ENV = "S3_EVAL_DATA"
"""Environment variable that overrides where the evaluation data lives."""

HOTPOTQA_FILE = "hotpotqa_dev_distractor/hotpotqa_dev_subsampled.jsonl"
QMSUM_FILE = "qmsum_val/val.jsonl"
KV_RETRIEVAL_FILE = "kv_retrieval/kv-retrieval-75_keys.jsonl.gz"
LEVAL_DIR = "leval"
LEVAL_TASKS = (
    "natural_question",
    "scientific_qa",
    "multidoc_qa",
    "legal_contract_qa",
    "financial_qa",
    "meeting_summ",
)
"""The L-Eval open-ended task files present in the shared data."""

Span = tuple[int, int, int]


@dataclass(frozen=True)
class EvalExample:
    """One question over one or more documents, with its answers and gold evidence."""

    qid: str
    """Stable id of the question, unique within a loader's output."""
    question: str
    """The question (or instruction) as given to a retriever."""
    answers: list[str]
    """Reference answers; any one of them counts as correct."""
    documents: list[str]
    """The haystack text(s) to index."""
    doc_ids: list[str]
    """One id per document, aligned with ``documents``."""
    gold: list[Span]
    """Gold evidence as (document index, start_char, end_char); empty when the set has none."""
    task: str
    """Name of the task the example comes from (e.g. ``hotpotqa``, ``leval/scientific_qa``)."""
    metadatas: list[dict[str, Any]] | None = None
    """One metadata dict per document, given to ``add_documents`` with it; None for none."""


def default_data_dir() -> Path | None:
    """Return the evaluation data folder, or None when it cannot be found.

    ``$S3_EVAL_DATA`` wins when set; otherwise ``../shared/data`` next to the project root of a
    source checkout is used if it exists.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    candidate = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _require_file(data_dir: str | Path, relative: str) -> Path:
    """Resolve a data file, failing with a message that says what to do."""
    path = Path(data_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"Evaluation data file not found: {path}. Expected '{relative}' under the data folder "
            f"'{data_dir}'. Pass the shared evaluation data folder (../shared/data from the "
            f"project root; its README.md describes the files) or set ${DATA_DIR_ENV} to it."
        )
    return path


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a (optionally gzipped) JSON-lines file, skipping blank lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


# --------------------------------------------------------------------------- HotpotQA haystacks


@dataclass(frozen=True)
class _Paragraph:
    title: str
    text: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.title, self.text)

    @property
    def n_words(self) -> int:
        return len(self.title.split()) + len(self.text.split())


def _paragraphs_of(row: dict[str, Any]) -> list[tuple[_Paragraph, bool]]:
    """A question's own paragraphs with their supporting flag, deduplicated by (title, text)."""
    merged: dict[tuple[str, str], tuple[_Paragraph, bool]] = {}
    for context in row["contexts"]:
        # Stripped so that a gold range never starts or ends on whitespace.
        para = _Paragraph(context["title"].strip(), context["paragraph_text"].strip())
        supporting = bool(context.get("is_supporting", False))
        if para.key in merged:
            supporting = supporting or merged[para.key][1]
        merged[para.key] = (para, supporting)
    return list(merged.values())


def _render_passages(passages: Sequence[tuple[_Paragraph, bool]]) -> tuple[str, list[Span]]:
    """Render passages LongBench-style and return the text and the supporting ranges.

    Each block is ``Passage {i}:\\n{title}\\n{text}``; blocks are joined by a blank line. A gold
    range covers ``{title}\\n{text}`` only: the ``Passage i:`` header is markup added here, not
    evidence, and would reward a retriever for returning it.
    """
    parts: list[str] = []
    gold: list[Span] = []
    offset = 0
    for i, (para, supporting) in enumerate(passages, start=1):
        if parts:
            parts.append("\n\n")
            offset += 2
        header = f"Passage {i}:\n"
        body = f"{para.title}\n{para.text}"
        if supporting:
            gold.append((0, offset + len(header), offset + len(header) + len(body)))
        parts.append(header + body)
        offset += len(header) + len(body)
    return "".join(parts), gold


def _answers_of(row: dict[str, Any]) -> list[str]:
    """Answer strings from ``answers_objects[].spans``, in order, without duplicates."""
    answers: list[str] = []
    for obj in row.get("answers_objects", []):
        for span in obj.get("spans", []):
            if span and span not in answers:
                answers.append(span)
    return answers


def _build_haystack(
    own: list[tuple[_Paragraph, bool]],
    pool: Sequence[_Paragraph],
    target_words: int,
    rng: random.Random,
) -> list[tuple[_Paragraph, bool]]:
    """Pad a question's paragraphs with distractors from ``pool`` and shuffle them."""
    passages = list(own)
    seen = {para.key for para, _ in own}
    words = sum(para.n_words for para, _ in own)
    order = list(range(len(pool)))
    rng.shuffle(order)
    for index in order:
        if words >= target_words:
            break
        candidate = pool[index]
        if candidate.key in seen:
            continue
        seen.add(candidate.key)
        passages.append((candidate, False))
        words += candidate.n_words
    rng.shuffle(passages)
    return passages


def load_hotpotqa_haystacks(
    data_dir: str | Path,
    n_questions: int,
    target_words: int = 3000,
    seed: int = 0,
    skip: int = 0,
) -> list[EvalExample]:
    """Build LongBench-like HotpotQA haystacks with exact gold evidence ranges.

    Questions ``skip .. skip + n_questions - 1`` (file order; fewer if the file ends first) each
    get one document: the question's own paragraphs plus distractor paragraphs drawn at random
    from the other questions of the whole file, added until the title + text word count reaches
    ``target_words`` (so it overshoots by at most one paragraph), then shuffled and rendered as
    ``Passage {i}:\\n{title}\\n{text}`` blocks joined by ``"\\n\\n"``. No (title, text) pair
    appears twice in a haystack. Gold ranges cover the title line and text of each supporting
    passage, not the ``Passage i:`` header, in document order.

    The random generator is seeded per question from ``seed`` and the question id, so a
    question's haystack does not depend on ``skip`` or ``n_questions``.
    """
    if n_questions < 0 or skip < 0:
        raise ValueError(f"n_questions and skip must be >= 0, got {n_questions} and {skip}")
    if target_words < 0:
        raise ValueError(f"target_words must be >= 0, got {target_words}")
    rows = list(_read_jsonl(_require_file(data_dir, HOTPOTQA_FILE)))
    own_by_row = [_paragraphs_of(row) for row in rows]
    # One global pool, first occurrence wins, so its order (and hence sampling) is stable.
    pool: dict[tuple[str, str], _Paragraph] = {}
    for own in own_by_row:
        for para, _ in own:
            pool.setdefault(para.key, para)
    pool_list = list(pool.values())

    examples: list[EvalExample] = []
    for index in range(skip, min(skip + n_questions, len(rows))):
        row = rows[index]
        qid = str(row["question_id"])
        # A string seed is hashed deterministically (sha512) by random.Random.
        rng = random.Random(f"hotpotqa:{seed}:{qid}")
        passages = _build_haystack(own_by_row[index], pool_list, target_words, rng)
        text, gold = _render_passages(passages)
        examples.append(
            EvalExample(
                qid=qid,
                question=row["question_text"],
                answers=_answers_of(row),
                documents=[text],
                doc_ids=[f"hotpotqa:{qid}"],
                gold=gold,
                task="hotpotqa",
            )
        )
    return examples


# ----------------------------------------------------------------------------------- QMSum


def _render_turns(turns: Sequence[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """Render transcript turns as ``Speaker: content`` lines; return text and per-line ranges."""
    lines: list[str] = []
    ranges: list[tuple[int, int]] = []
    offset = 0
    for turn in turns:
        speaker = str(turn.get("speaker", "")).strip()
        content = " ".join(str(turn.get("content", "")).split())
        # Content is whitespace-normalised so that each turn stays on exactly one line.
        line = f"{speaker}: {content}" if content else f"{speaker}:"
        lines.append(line)
        ranges.append((offset, offset + len(line)))
        offset += len(line) + 1
    return "\n".join(lines), ranges


def _turn_span_gold(
    spans: Sequence[Sequence[Any]], line_ranges: Sequence[tuple[int, int]], where: str
) -> list[Span]:
    """Turn inclusive ``[first, last]`` turn-index pairs (ints or strings) into char ranges."""
    gold: list[Span] = []
    for span in spans:
        if len(span) != 2:
            raise ValueError(
                f"{where}: relevant_text_span entry {span!r} is not a [first, last] pair"
            )
        first, last = int(span[0]), int(span[1])
        if not 0 <= first <= last < len(line_ranges):
            raise ValueError(
                f"{where}: turn range [{first}, {last}] is outside the "
                f"{len(line_ranges)} transcript turns"
            )
        gold.append((0, line_ranges[first][0], line_ranges[last][1]))
    return gold


def load_qmsum(data_dir: str | Path, n_meetings: int | None = None) -> list[EvalExample]:
    """Load QMSum validation meetings, one example per specific query.

    Each meeting is one document of ``Speaker: content`` lines joined by ``"\\n"`` (one line per
    turn; whitespace inside a turn is collapsed to single spaces). Gold has one range per
    inclusive ``relevant_text_span`` turn range, from the start of its first turn's line to the
    end of its last turn's line. General (summary) queries have no evidence and are skipped.
    ``n_meetings`` limits the meetings read, in file order.
    """
    if n_meetings is not None and n_meetings < 0:
        raise ValueError(f"n_meetings must be >= 0 or None, got {n_meetings}")
    examples: list[EvalExample] = []
    for meeting_index, row in enumerate(_read_jsonl(_require_file(data_dir, QMSUM_FILE))):
        if n_meetings is not None and meeting_index >= n_meetings:
            break
        text, line_ranges = _render_turns(row["meeting_transcripts"])
        doc_id = f"qmsum:{meeting_index}"
        for query_index, query in enumerate(row.get("specific_query_list", [])):
            qid = f"{doc_id}:{query_index}"
            examples.append(
                EvalExample(
                    qid=qid,
                    question=query["query"],
                    answers=[query["answer"]],
                    documents=[text],
                    doc_ids=[doc_id],
                    gold=_turn_span_gold(query.get("relevant_text_span", []), line_ranges, qid),
                    task="qmsum",
                )
            )
    return examples


# ---------------------------------------------------------------------------- KV retrieval


def _render_kv_records(records: Sequence[Sequence[str]], key: str) -> tuple[str, tuple[int, int]]:
    """Render key-value pairs as a JSON object, one pair per line, as Lost in the Middle does.

    Returns the text and the character range of the ``"key": "value"`` pair for ``key``
    (without the surrounding brace, indent or comma).
    """
    parts: list[str] = []
    offset = 0
    found: tuple[int, int] | None = None
    last = len(records) - 1
    for index, (record_key, record_value) in enumerate(records):
        prefix = "{" if index == 0 else " "
        suffix = "}" if index == last else ",\n"
        pair = f"{json.dumps(record_key)}: {json.dumps(record_value)}"
        if record_key == key:
            if found is not None:
                raise ValueError(f"key {key!r} occurs more than once in the records")
            found = (offset + len(prefix), offset + len(prefix) + len(pair))
        parts.append(prefix + pair + suffix)
        offset += len(prefix) + len(pair) + len(suffix)
    if found is None:
        raise ValueError(f"key {key!r} is not among the records")
    return "".join(parts), found


def load_kv_retrieval(data_dir: str | Path, n: int | None = None) -> list[EvalExample]:
    """Load the first ``n`` (all if None) synthetic key-value retrieval items.

    The document is the JSON object of 75 UUID pairs, one pair per line; the question asks for
    one key's value; gold is the character range of that ``"key": "value"`` pair.
    """
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    examples: list[EvalExample] = []
    for index, row in enumerate(_read_jsonl(_require_file(data_dir, KV_RETRIEVAL_FILE))):
        if n is not None and index >= n:
            break
        key, value = str(row["key"]), str(row["value"])
        text, (start, end) = _render_kv_records(row["ordered_kv_records"], key)
        examples.append(
            EvalExample(
                qid=f"kv:{index}",
                question=f'What is the value of key "{key}"?',
                answers=[value],
                documents=[text],
                doc_ids=[f"kv:{index}"],
                gold=[(0, start, end)],
                task="kv_retrieval",
            )
        )
    return examples


# ---------------------------------------------------------------------------------- L-Eval


def load_leval(data_dir: str | Path, task: str, n_docs: int | None = None) -> list[EvalExample]:
    """Load one L-Eval open-ended task, one example per instruction.

    ``task`` names a file ``leval/{task}.jsonl`` (see :data:`LEVAL_TASKS`). The document is the
    row's ``input``, the question its instruction and the answer the matching output. L-Eval has
    no gold evidence, so ``gold`` is empty. ``n_docs`` limits the documents read, in file order.
    """
    if n_docs is not None and n_docs < 0:
        raise ValueError(f"n_docs must be >= 0 or None, got {n_docs}")
    if "/" in task or "\\" in task or task.endswith(".jsonl"):
        raise ValueError(f"task must be a bare task name such as {LEVAL_TASKS[0]!r}, got {task!r}")
    path = _require_file(data_dir, f"{LEVAL_DIR}/{task}.jsonl")
    examples: list[EvalExample] = []
    for doc_index, row in enumerate(_read_jsonl(path)):
        if n_docs is not None and doc_index >= n_docs:
            break
        instructions, outputs = row["instructions"], row["outputs"]
        if len(instructions) != len(outputs):
            raise ValueError(
                f"{path} row {doc_index}: {len(instructions)} instructions but "
                f"{len(outputs)} outputs"
            )
        doc_id = f"leval:{task}:{doc_index}"
        for i, (instruction, output) in enumerate(zip(instructions, outputs, strict=True)):
            examples.append(
                EvalExample(
                    qid=f"{doc_id}:{i}",
                    question=instruction,
                    answers=[output],
                    documents=[row["input"]],
                    doc_ids=[doc_id],
                    gold=[],
                    task=f"leval/{task}",
                )
            )
    return examples

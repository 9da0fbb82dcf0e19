"""Tests for the evaluation loaders: tiny synthetic fixtures, plus the shared data when present."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from s3_retriever.eval.data import (
    DATA_DIR_ENV,
    LEVAL_TASKS,
    EvalExample,
    default_data_dir,
    load_hotpotqa_haystacks,
    load_kv_retrieval,
    load_leval,
    load_qmsum,
)
from tests.eval.fixtures import hotpot_row, write_jsonl

_PASSAGE_HEADER = re.compile(r"^Passage (\d+):\n", re.MULTILINE)


def _passages(document: str) -> list[tuple[int, str]]:
    """(number, 'title\\ntext') for each rendered passage."""
    headers = list(_PASSAGE_HEADER.finditer(document))
    blocks = []
    for i, header in enumerate(headers):
        end = headers[i + 1].start() - 2 if i + 1 < len(headers) else len(document)
        blocks.append((int(header.group(1)), document[header.end() : end]))
    return blocks


# ------------------------------------------------------------------------------- HotpotQA


@pytest.fixture
def hotpot_dir(tmp_path: Path) -> Path:
    shared = {
        "id": "9",
        "title": "Shared",
        "paragraph_text": "  A paragraph that two questions share, padded with spaces.  ",
        "is_supporting": False,
    }
    rows = [hotpot_row(q, shared if q in (0, 1) else None) for q in range(8)]
    write_jsonl(tmp_path / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl", rows)
    return tmp_path


def test_hotpotqa_gold_ranges_slice_supporting_paragraphs(hotpot_dir: Path) -> None:
    examples = load_hotpotqa_haystacks(hotpot_dir, n_questions=8, target_words=80)
    assert [e.qid for e in examples] == [f"q{q}" for q in range(8)]
    for q, example in enumerate(examples):
        document = example.documents[0]
        assert example.answers == [f"answer {q}"]
        assert example.doc_ids == [f"hotpotqa:q{q}"]
        assert example.task == "hotpotqa"
        sliced = sorted(document[start:end] for _, start, end in example.gold)
        expected = sorted(
            f"Title {q}-{j}\nParagraph {j} of question {q} has exactly eight words here."
            for j in range(2)
        )
        assert sliced == expected
        assert [g[0] for g in example.gold] == [0, 0]
        assert example.gold == sorted(example.gold)


def test_hotpotqa_haystack_is_padded_without_repeats(hotpot_dir: Path) -> None:
    for example in load_hotpotqa_haystacks(hotpot_dir, n_questions=8, target_words=80):
        passages = _passages(example.documents[0])
        assert [number for number, _ in passages] == list(range(1, len(passages) + 1))
        bodies = [body for _, body in passages]
        assert len(bodies) == len(set(bodies))
        assert sum(len(body.split()) for body in bodies) >= 80
        own = {body for body in bodies if body.startswith(f"Title {example.qid[1:]}-")}
        assert len(own) == 3  # every own paragraph is kept, distractors come from others
        # the paragraph shared by q0 and q1 is stripped and rendered at most once
        shared = [body for body in bodies if body.startswith("Shared")]
        assert len(shared) <= 1
        if example.qid in ("q0", "q1"):
            assert shared == ["Shared\nA paragraph that two questions share, padded with spaces."]


def test_hotpotqa_is_deterministic_and_independent_of_slicing(hotpot_dir: Path) -> None:
    first = load_hotpotqa_haystacks(hotpot_dir, n_questions=8, target_words=80, seed=3)
    again = load_hotpotqa_haystacks(hotpot_dir, n_questions=8, target_words=80, seed=3)
    assert first == again
    sliced = load_hotpotqa_haystacks(hotpot_dir, n_questions=2, target_words=80, seed=3, skip=5)
    assert sliced == first[5:7]
    other_seed = load_hotpotqa_haystacks(hotpot_dir, n_questions=8, target_words=80, seed=4)
    assert [e.documents for e in other_seed] != [e.documents for e in first]


def test_hotpotqa_clamps_to_file_end_and_stops_when_pool_runs_out(hotpot_dir: Path) -> None:
    assert len(load_hotpotqa_haystacks(hotpot_dir, n_questions=5, skip=6)) == 2
    huge = load_hotpotqa_haystacks(hotpot_dir, n_questions=1, target_words=10**6)[0]
    # 8 questions x 3 own paragraphs + 1 shared paragraph, each once
    assert len(_passages(huge.documents[0])) == 25


def test_hotpotqa_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="hotpotqa_dev_subsampled.jsonl"):
        load_hotpotqa_haystacks(tmp_path, n_questions=1)


# ---------------------------------------------------------------------------------- QMSum


@pytest.fixture
def qmsum_dir(tmp_path: Path) -> Path:
    meeting: dict[str, Any] = {
        "topic_list": [],
        "general_query_list": [{"query": "Summarise.", "answer": "A summary."}],
        "specific_query_list": [
            {"query": "What about B?", "answer": "B spoke.", "relevant_text_span": [["1", "2"]]},
            {"query": "And E?", "answer": "E.", "relevant_text_span": [[0, 0], ["4", "4"]]},
        ],
        "meeting_transcripts": [
            {"speaker": "A", "content": "Hello ."},
            {"speaker": "B", "content": "Second  turn\nwith a break ."},
            {"speaker": "C", "content": ""},
            {"speaker": "D", "content": "Fourth ."},
            {"speaker": "E", "content": "Fünfte ☃ ."},
        ],
    }
    other = dict(meeting, specific_query_list=meeting["specific_query_list"][:1])
    write_jsonl(tmp_path / "qmsum_val" / "val.jsonl", [meeting, other])
    return tmp_path


def test_qmsum_renders_turns_and_gold(qmsum_dir: Path) -> None:
    examples = load_qmsum(qmsum_dir)
    assert [e.qid for e in examples] == ["qmsum:0:0", "qmsum:0:1", "qmsum:1:0"]
    document = examples[0].documents[0]
    assert document == "A: Hello .\nB: Second turn with a break .\nC:\nD: Fourth .\nE: Fünfte ☃ ."
    first, second = examples[0], examples[1]
    assert [document[s:e] for _, s, e in first.gold] == ["B: Second turn with a break .\nC:"]
    assert [document[s:e] for _, s, e in second.gold] == ["A: Hello .", "E: Fünfte ☃ ."]
    assert first.answers == ["B spoke."]
    assert len(load_qmsum(qmsum_dir, n_meetings=1)) == 2


def test_qmsum_rejects_out_of_range_turns(tmp_path: Path) -> None:
    row = {
        "specific_query_list": [{"query": "q", "answer": "a", "relevant_text_span": [["0", "3"]]}],
        "meeting_transcripts": [{"speaker": "A", "content": "only turn"}],
    }
    write_jsonl(tmp_path / "qmsum_val" / "val.jsonl", [row])
    with pytest.raises(ValueError, match="outside"):
        load_qmsum(tmp_path)


# --------------------------------------------------------------------------- KV retrieval


def test_kv_retrieval_renders_json_and_gold(tmp_path: Path) -> None:
    rows = [
        {
            "ordered_kv_records": [["k1", "v1"], ["k2", "v2"], ["k3", "v3"]],
            "key": "k2",
            "value": "v2",
        },
        {"ordered_kv_records": [["a", "b"]], "key": "a", "value": "b"},
    ]
    write_jsonl(tmp_path / "kv_retrieval" / "kv-retrieval-75_keys.jsonl.gz", rows, gz=True)
    examples = load_kv_retrieval(tmp_path, n=None)
    assert len(examples) == 2 and len(load_kv_retrieval(tmp_path, n=1)) == 1
    first = examples[0]
    document = first.documents[0]
    assert json.loads(document) == {"k1": "v1", "k2": "v2", "k3": "v3"}
    assert document.splitlines()[1] == ' "k2": "v2",'
    ((_, start, end),) = first.gold
    assert document[start:end] == '"k2": "v2"'
    assert first.question == 'What is the value of key "k2"?'
    assert first.answers == ["v2"]
    assert examples[1].documents[0] == '{"a": "b"}'


# --------------------------------------------------------------------------------- L-Eval


def test_leval_one_example_per_instruction(tmp_path: Path) -> None:
    rows = [
        {"input": "Doc one.", "instructions": ["Q1?", "Q2?"], "outputs": ["A1", "A2"]},
        {"input": "Doc two.", "instructions": ["Q3?"], "outputs": ["A3"]},
    ]
    write_jsonl(tmp_path / "leval" / "multidoc_qa.jsonl", rows)
    examples = load_leval(tmp_path, "multidoc_qa")
    assert [(e.question, e.answers, e.documents, e.gold) for e in examples] == [
        ("Q1?", ["A1"], ["Doc one."], []),
        ("Q2?", ["A2"], ["Doc one."], []),
        ("Q3?", ["A3"], ["Doc two."], []),
    ]
    assert examples[2].doc_ids == ["leval:multidoc_qa:1"]
    assert examples[0].task == "leval/multidoc_qa"
    assert len(load_leval(tmp_path, "multidoc_qa", n_docs=1)) == 2
    with pytest.raises(FileNotFoundError, match="leval/scientific_qa.jsonl"):
        load_leval(tmp_path, "scientific_qa")


def test_default_data_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path


# ------------------------------------------------------------------------ real shared data


def _supporting(row: dict[str, Any]) -> list[str]:
    return sorted(
        f"{c['title'].strip()}\n{c['paragraph_text'].strip()}"
        for c in row["contexts"]
        if c["is_supporting"]
    )


@pytest.mark.data
def test_real_hotpotqa_haystacks(shared_data: Path) -> None:
    path = shared_data / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:20]]
    examples = load_hotpotqa_haystacks(shared_data, n_questions=20, target_words=3000)
    assert examples == load_hotpotqa_haystacks(shared_data, n_questions=20, target_words=3000)
    for row, example in zip(rows, examples, strict=True):
        document = example.documents[0]
        assert example.qid == row["question_id"]
        assert sorted(document[s:e] for _, s, e in example.gold) == _supporting(row)
        bodies = [body for _, body in _passages(document)]
        assert len(bodies) == len(set(bodies))
        assert sum(len(body.split()) for body in bodies) >= 3000
        assert example.answers == row["answers_objects"][0]["spans"]


@pytest.mark.data
def test_real_qmsum(shared_data: Path) -> None:
    examples = load_qmsum(shared_data)
    assert len(examples) == 237
    assert len({e.documents[0] for e in examples}) == 35
    for example in examples:
        document = example.documents[0]
        assert example.gold
        for _, start, end in example.gold:
            assert start == 0 or document[start - 1] == "\n"
            assert end == len(document) or document[end] == "\n"


@pytest.mark.data
def test_real_kv_retrieval(shared_data: Path) -> None:
    examples = load_kv_retrieval(shared_data, n=50)
    assert len(examples) == 50
    for example in examples:
        ((_, start, end),) = example.gold
        records = json.loads(example.documents[0])
        assert len(records) == 75
        key = example.question.split('"')[1]
        assert records[key] == example.answers[0]
        assert example.documents[0][start:end] == f'"{key}": "{example.answers[0]}"'


@pytest.mark.data
@pytest.mark.parametrize(
    ("task", "n_questions"),
    [
        ("natural_question", 109),
        ("scientific_qa", 184),
        ("multidoc_qa", 158),
        ("legal_contract_qa", 154),
        ("financial_qa", 68),
        ("meeting_summ", 177),
    ],
)
def test_real_leval(shared_data: Path, task: str, n_questions: int) -> None:
    assert task in LEVAL_TASKS
    examples: list[EvalExample] = load_leval(shared_data, task)
    assert len(examples) == n_questions
    assert all(e.documents[0] and e.answers[0] and not e.gold for e in examples)

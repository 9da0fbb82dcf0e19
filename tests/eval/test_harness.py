"""The evaluation harness end to end on tiny fixtures, plus its setting parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from s3_retriever.cli import main as cli_main
from s3_retriever.config import RetrieverConfig
from s3_retriever.eval.harness import EvalSettings, apply_override, run_eval, variants
from s3_retriever.eval.methods import middle_truncate, parse_methods
from s3_retriever.eval.qa import Generator
from s3_retriever.eval.report import write_report
from tests.eval.fixtures import hotpot_row, write_jsonl
from tests.integration.conftest import requires_model


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    rows = [hotpot_row(q) for q in range(6)]
    write_jsonl(tmp_path / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl", rows)
    return tmp_path


def test_override_converts_to_the_setting_type_and_names_bad_input() -> None:
    config = RetrieverConfig()
    changed = apply_override(config, "spans.smooth_width=7")
    assert changed.spans.smooth_width == 7 and config.spans.smooth_width == 15
    assert apply_override(config, "hybrid.bm25_weight=0.5").hybrid.bm25_weight == 0.5
    heads = apply_override(config, "retrieval_heads=8:0,5:6").retrieval_heads
    assert heads == ((8, 0), (5, 6))
    with pytest.raises(ValueError, match="spans has no setting"):
        apply_override(config, "spans.smoothing=7")
    with pytest.raises(ValueError, match="takes a int"):
        apply_override(config, "spans.smooth_width=wide")
    with pytest.raises(ValueError, match="section.field=value"):
        apply_override(config, "spans.smooth_width")


def test_sweep_gives_one_config_per_value(data_dir: Path) -> None:
    settings = EvalSettings(
        data_dir, ["hotpotqa-3k"], ["bm25"], sweep="hybrid.fusion=zsum,rrf,union"
    )
    labels = [(label, c.hybrid.fusion) for label, c in variants(RetrieverConfig(), settings)]
    assert labels == [
        ("hybrid.fusion=zsum", "zsum"),
        ("hybrid.fusion=rrf", "rrf"),
        ("hybrid.fusion=union", "union"),
    ]


def test_several_sweeps_each_vary_one_setting_from_the_base(data_dir: Path) -> None:
    sweep = "scoring.temperature=0.5,2 + query_template=Q: {question}"
    settings = EvalSettings(data_dir, ["hotpotqa-3k"], ["bm25"], sweep=sweep)
    configs = variants(RetrieverConfig(), settings)
    assert [label for label, _ in configs] == [
        "scoring.temperature=0.5",
        "scoring.temperature=2",
        "query_template=Q: {question}",
    ]
    assert [c.scoring.temperature for _, c in configs] == [0.5, 2.0, 1.0]
    assert [c.query_template for _, c in configs] == ["{question}"] * 2 + ["Q: {question}"]
    twice = EvalSettings(
        data_dir, ["hotpotqa-3k"], ["bm25"], sweep="scoring.temperature=2 + scoring.temperature=2"
    )
    with pytest.raises(ValueError, match="twice"):
        variants(RetrieverConfig(), twice)


def test_bad_settings_are_refused(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        EvalSettings(data_dir, ["hotpot"], ["bm25"])
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("s3:exact,bm26")
    with pytest.raises(ValueError, match="budgets"):
        EvalSettings(data_dir, ["kv"], ["bm25"], budgets=[0])


def test_middle_truncate_keeps_both_ends() -> None:
    assert middle_truncate(range(10), 10) is None
    assert middle_truncate(range(10), 4) == (2, 8)
    assert middle_truncate(range(10), 5) == (2, 7)


def test_harness_end_to_end_on_tiny_model(
    data_dir: Path, make_retriever: Any, loaded: Any, tmp_path: Path
) -> None:
    methods = ["s3:exact", "hybrid:exact", "s3:aligned", "bm25", "full"]
    settings = EvalSettings(
        data_dir,
        ["hotpotqa-3k"],
        methods,
        budgets=[16, 10_000],
        n=3,
        qa_budgets=[16],
        show_progress=False,
    )
    generator = Generator(loaded=loaded, max_new_tokens=3)
    report = run_eval(settings, retriever=make_retriever(), generator=generator)
    cells = report["results"]["default"]["hotpotqa-3k"]
    assert report["tasks"]["hotpotqa-3k"]["questions"] == 3
    assert report["tasks"]["hotpotqa-3k"]["s3_index_builds"] == 3
    for method in methods:
        small = cells[method]["budgets"]["16"]["evidence_recall"]
        large = cells[method]["budgets"]["10000"]["evidence_recall"]
        assert 0.0 <= small <= large <= 1.0
        assert "qa_f1" in cells[method]["budgets"]["16"]
    # A budget larger than the haystack returns all of it, so every gold character is covered.
    assert cells["full"]["budgets"]["10000"]["evidence_recall"] == 1.0
    assert cells["s3:exact"]["budgets"]["10000"]["evidence_recall"] == 1.0
    assert "qa_f1" in cells["full-context"]
    written = write_report(report, tmp_path / "out" / "run", "s3-retriever eval ...")
    assert {p.suffix for p in written} >= {".json", ".md"}
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved["command"] == "s3-retriever eval ..." and saved["results"] == report["results"]
    table = (tmp_path / "out" / "run.md").read_text()
    assert "| s3:exact |" in table and "Reproduce:" in table


def test_sweep_over_an_index_setting_reindexes_per_value(
    data_dir: Path, make_retriever: Any
) -> None:
    settings = EvalSettings(
        data_dir,
        ["hotpotqa-3k"],
        ["s3:exact"],
        budgets=[32],
        n=1,
        sweep="scan.chunk_size=16,64",
        show_progress=False,
    )
    report = run_eval(settings, retriever=make_retriever())
    assert set(report["results"]) == {"scan.chunk_size=16", "scan.chunk_size=64"}
    assert report["config"]["scan.chunk_size=16"]["scan"]["chunk_size"] == 16
    # One index per sweep value for the one document set.
    assert report["tasks"]["hotpotqa-3k"]["s3_index_builds"] == 2


@pytest.mark.data
@requires_model
def test_cli_eval_on_real_data(shared_data: Path, tmp_path: Path) -> None:
    """The documented command on a few real questions with the bundled model: it cannot rot."""
    out = tmp_path / "eval"
    status = cli_main(
        [
            "eval",
            "--data",
            str(shared_data),
            "--tasks",
            "hotpotqa-3k,kv",
            "--n",
            "2",
            "--methods",
            "s3:exact,hybrid:exact,bm25,full",
            "--budgets",
            "256,100000",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    report = json.loads(out.with_suffix(".json").read_text())
    for task in ("hotpotqa-3k", "kv"):
        cells = report["results"]["default"][task]
        assert report["tasks"][task]["questions"] == 2
        # At a budget larger than any haystack every method covers all the evidence.
        for method in ("s3:exact", "hybrid:exact", "full"):
            assert cells[method]["budgets"]["100000"]["evidence_recall"] == 1.0
        assert 0.0 <= cells["s3:exact"]["budgets"]["256"]["evidence_recall"] <= 1.0
    assert "--tasks hotpotqa-3k,kv" in report["command"]


def test_questions_a_metric_does_not_apply_to_are_left_out_of_its_mean() -> None:
    from s3_retriever.eval.tally import Tally

    tally = Tally()
    for value in (1.0, float("nan"), 0.0):
        tally.add(("task", "answer_recall"), value)
    assert tally.mean(("task", "answer_recall")) == 0.5
    tally.add(("other",), float("nan"))
    assert tally.mean(("other",)) is None

"""The command line: one-line errors and an offline index/query round trip."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s3_retriever import S3Retriever, SAEBundle
from s3_retriever.cli import main
from tests.conftest import RetrieverFactory


@pytest.fixture()
def tiny_from_pretrained(
    monkeypatch: pytest.MonkeyPatch, make_retriever: RetrieverFactory
) -> list[Any]:
    """Make S3Retriever.from_pretrained build the tiny retriever; records its arguments."""
    calls: list[Any] = []

    def fake(cls: type[S3Retriever], *args: Any, **kwargs: Any) -> S3Retriever:
        calls.append((args, kwargs))
        return make_retriever()

    monkeypatch.setattr(S3Retriever, "from_pretrained", classmethod(fake))
    return calls


@pytest.fixture()
def files(tmp_path: Path, corpus: dict[str, str]) -> list[Path]:
    paths = []
    for name in ("trains", "hospital", "unicode"):
        path = tmp_path / f"{name}.txt"
        path.write_text(corpus[name], encoding="utf-8")
        paths.append(path)
    return paths


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("s3-retriever: error:")
    return lines[0]


def test_non_utf8_file_is_one_line_error(
    tmp_path: Path, tiny_from_pretrained: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A Latin-1 file fails with status 2 and one error line naming it; nothing is written."""
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1"))
    status = main(["index", str(bad), "--out", str(tmp_path / "index")])
    out = capsys.readouterr()
    assert status != 0
    line = _one_error_line(out.err)
    assert "latin1.txt" in line and "UTF-8" in line
    assert not (tmp_path / "index").exists()


def test_missing_file_is_one_line_error(
    tmp_path: Path,
    files: list[Path],
    tiny_from_pretrained: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A missing input fails with exit status 2 and a single error line naming it."""
    status = main(
        ["index", str(files[0]), str(tmp_path / "absent.txt"), "--out", str(tmp_path / "i")]
    )
    out = capsys.readouterr()
    assert status != 0
    assert "absent.txt" in _one_error_line(out.err)
    assert not tiny_from_pretrained
    assert not (tmp_path / "i").exists()


def test_query_of_missing_index_is_one_line_error(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Querying a folder that holds no index fails with a single error line."""
    status = main(["query", str(tmp_path / "none"), "question", "--model", str(model_dir)])
    assert status != 0
    assert "manifest.json" in _one_error_line(capsys.readouterr().err)


def test_index_and_query_round_trip(
    tmp_path: Path,
    files: list[Path],
    model_dir: Path,
    corpus: dict[str, str],
    tiny_from_pretrained: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """index writes a loadable index of the files; query prints spans with their source files."""
    index = tmp_path / "index"
    status = main(
        ["index", str(files[0]), str(files[1]), "--out", str(index), "--model", str(model_dir)]
    )
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.startswith("indexed 2 document(s)")
    assert (index / "manifest.json").is_file()
    assert len(tiny_from_pretrained) == 1

    status = main(
        ["query", str(index), "When does the train leave?", "--model", str(model_dir), "--json"]
    )
    out = capsys.readouterr()
    assert status == 0, out.err
    (line,) = out.out.splitlines()
    answer = json.loads(line)
    assert answer["question"] == "When does the train leave?"
    rows = answer["hits"]
    assert rows
    sources = {str(p): p.read_text(encoding="utf-8") for p in files[:2]}
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    for row in rows:
        assert row["doc_id"] in sources
        assert row["text"] == sources[row["doc_id"]][row["start_char"] : row["end_char"]]
        assert row["id"] == f"{row['doc_id']}:{row['start_char']}:{row['end_char']}"
        assert 0.0 <= row["relevance"] <= 1.0

    status = main(
        [
            "query",
            str(index),
            "How many nurses?",
            "--model",
            str(model_dir),
            "--budget",
            "60",
            "--mode",
            "bm25",
        ]
    )
    out = capsys.readouterr()
    assert status == 0, out.err
    headers = [line for line in out.out.splitlines() if not line.startswith("    ")]
    assert headers
    for rank, header in enumerate(headers, start=1):
        assert header.startswith(f"{rank}. [") and " relevance=" in header
        source, span = header.split("[", 1)[1].split("]")[0].rsplit(" ", 1)
        start, end = (int(x) for x in span.split(":"))
        assert source in sources
        assert " score=" in header
        body = sources[source][start:end].replace("\n", "\n    ")
        assert "    " + body in out.out


def test_index_refuses_existing_then_appends(
    tmp_path: Path,
    files: list[Path],
    model_dir: Path,
    tiny_from_pretrained: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Indexing into an existing index needs --append; with it the new file joins the index."""
    index = tmp_path / "index"
    assert main(["index", str(files[0]), "--out", str(index)]) == 0
    capsys.readouterr()
    status = main(["index", str(files[2]), "--out", str(index)])
    assert status != 0
    assert "--append" in _one_error_line(capsys.readouterr().err)
    status = main(
        ["index", str(files[2]), "--out", str(index), "--append", "--model", str(model_dir)]
    )
    assert status == 0, capsys.readouterr().err
    restored = S3Retriever.load(index, model_path=model_dir)
    assert restored.doc_ids == [str(files[0]), str(files[2])]
    assert restored.index.corpus.metadatas[1] == {"source": str(files[2])}


def test_folder_and_jsonl_inputs(
    tmp_path: Path,
    corpus: dict[str, str],
    model_dir: Path,
    tiny_from_pretrained: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder contributes every file below it; a JSONL file one document a line, with its id
    (or path:line) and metadata."""
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(corpus["trains"], encoding="utf-8")
    (folder / "sub" / "a.txt").write_text(corpus["rivers"], encoding="utf-8")
    jsonl = tmp_path / "more.jsonl"
    lines = [
        json.dumps({"id": "h", "text": corpus["hospital"], "metadata": {"year": 2022}}),
        "",
        json.dumps({"text": corpus["unicode"]}),
    ]
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    index = tmp_path / "index"
    argv = ["index", str(folder), str(jsonl), "--out", str(index), "--quiet"]
    assert main([*argv, "--commit-every", "2"]) == 0, capsys.readouterr().err
    restored = S3Retriever.load(index, model_path=model_dir)
    assert restored.doc_ids == [
        str(folder / "b.txt"),
        str(folder / "sub" / "a.txt"),
        "h",
        f"{jsonl}:3",
    ]
    assert restored.index.corpus.metadatas[2] == {"source": str(jsonl), "year": 2022}
    assert restored.index.corpus.texts[3] == corpus["unicode"]


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", "not valid JSON"), ('{"id": 1}', '"text" string'), ("[1]", '"text" string')],
)
def test_bad_jsonl_line_is_one_line_error(
    tmp_path: Path,
    line: str,
    message: str,
    tiny_from_pretrained: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A malformed JSONL line fails with one error line giving the file and line number."""
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    status = main(["index", str(jsonl), "--out", str(tmp_path / "i"), "--quiet"])
    err = _one_error_line(capsys.readouterr().err)
    assert status != 0
    assert f"{jsonl}:2" in err and message in err


def test_killed_run_resumes_where_it_stopped(
    tmp_path: Path,
    corpus: dict[str, str],
    model_dir: Path,
    make_retriever: RetrieverFactory,
    monkeypatch: pytest.MonkeyPatch,
    tiny_from_pretrained: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run killed after its second commit keeps two batches; --resume scans only the rest,
    and the final index equals one built in a single run."""
    import s3_retriever.bulk as bulk

    jsonl = tmp_path / "docs.jsonl"
    names = list(corpus)
    jsonl.write_text(
        "".join(json.dumps({"id": n, "text": corpus[n]}) + "\n" for n in names), encoding="utf-8"
    )
    index = tmp_path / "index"
    argv = ["index", str(jsonl), "--out", str(index), "--commit-every", "1", "--quiet"]
    argv += ["--model", str(model_dir)]
    real = bulk.index_corpus

    def killed_after_two_commits(*args: Any, **kwargs: Any) -> Any:
        def kill(report: bulk.BulkReport) -> None:
            if report.commits == 2:
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_commit": kill})

    monkeypatch.setattr(bulk, "index_corpus", killed_after_two_commits)
    assert main(argv) == 130
    assert "--resume" in capsys.readouterr().err
    assert S3Retriever.load(index, model_path=model_dir).doc_ids == names[:2]
    monkeypatch.setattr(bulk, "index_corpus", real)
    capsys.readouterr()
    assert main(argv) != 0  # an existing index needs --resume or --append
    assert "--resume" in _one_error_line(capsys.readouterr().err)
    assert main([*argv, "--resume"]) == 0
    assert "skipped 2 already indexed" in capsys.readouterr().out
    resumed = S3Retriever.load(index, model_path=model_dir)
    fresh = make_retriever()
    fresh.add_documents([corpus[n] for n in names], ids=names)
    assert resumed.doc_ids == fresh.doc_ids
    for field_key, postings in fresh.index.postings.items():
        got, want = resumed.index.postings[field_key], postings
        assert np.array_equal(got.position_bytes, want.position_bytes)
        assert np.array_equal(got.activation_codes, want.activation_codes)
    for field_key, store in fresh.index.key_stores.items():
        assert np.array_equal(resumed.index.key_stores[field_key].codes, store.codes)


@pytest.fixture()
def index_dir(
    tmp_path: Path, files: list[Path], tiny_from_pretrained: list[Any], capsys: Any
) -> Path:
    """An index of the three test files (metadata ``source`` = the file's path)."""
    index = tmp_path / "index"
    assert main(["index", *map(str, files), "--out", str(index)]) == 0
    capsys.readouterr()
    return index


def test_query_answers_several_questions_with_one_model_load(
    index_dir: Path,
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Questions as arguments or on stdin: one JSON line each, the index loaded once."""
    loads = []
    real_load = S3Retriever.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: type[S3Retriever], *args: Any, **kwargs: Any) -> S3Retriever:
        loads.append(args)
        return real_load(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(S3Retriever, "load", classmethod(counting_load))
    questions = ["When does the train leave?", "How many nurses?", "東京"]
    common = ["--model", str(model_dir), "--budget", "80"]
    assert main(["query", str(index_dir), *questions, *common]) == 0
    from_args = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(questions[:2]) + "\n\n" + questions[2]))
    assert main(["query", str(index_dir), *common]) == 0
    from_stdin = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["question"] for a in from_args] == [a["question"] for a in from_stdin] == questions
    assert from_args == from_stdin
    assert all(a["hits"] for a in from_args[:2])
    assert len(loads) == 2  # once per command, not once per question
    monkeypatch.setattr("sys.stdin", io.StringIO("\n  \n"))
    assert main(["query", str(index_dir), *common]) == 2
    assert "no question given" in _one_error_line(capsys.readouterr().err)


def test_query_filter_and_token_budget_options(
    index_dir: Path, files: list[Path], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["query", str(index_dir), "train nurses", "--model", str(model_dir), "--json"]
    assert main([*base, "--filter", f"source={files[1]}", "--token-budget", "60"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and {h["doc_id"] for h in hits} == {str(files[1])}
    two = [f"--filter=doc_id={files[0]}", f"--filter=doc_id={files[1]}"]
    assert main([*base, *two, "--mode", "bm25"]) == 0
    assert {h["doc_id"] for h in json.loads(capsys.readouterr().out)["hits"]} <= {
        str(files[0]),
        str(files[1]),
    }
    assert main([*base, "--filter", "no-equals-sign"]) == 2
    assert "--filter takes key=value" in _one_error_line(capsys.readouterr().err)


def test_help_names_modes_and_eval_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    from s3_retriever.eval.harness import TASKS

    with pytest.raises(SystemExit):
        main(["query", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "s3: attention only" in text and "--token-budget TOKEN_BUDGET, --budget" in text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(task in text for task in TASKS)


def test_empty_input_files_are_reported(
    tmp_path: Path,
    files: list[Path],
    tiny_from_pretrained: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    assert main(["index", str(empty), "--out", str(tmp_path / "none")]) == 2
    assert "nothing to index" in _one_error_line(capsys.readouterr().err)
    assert not tiny_from_pretrained and not (tmp_path / "none").exists()
    assert main(["index", str(empty), str(files[0]), "--out", str(tmp_path / "one")]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("indexed 1 document(s)")
    assert f"skipped 1 file(s) holding no text: {empty}" in out.out


def test_query_with_bad_budget_reports_error(
    tmp_path: Path,
    files: list[Path],
    model_dir: Path,
    tiny_from_pretrained: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A budget below one is reported as an error line, not a traceback."""
    index = tmp_path / "index"
    assert main(["index", str(files[0]), "--out", str(index)]) == 0
    capsys.readouterr()
    status = main(["query", str(index), "train", "--model", str(model_dir), "--budget", "0"])
    err = capsys.readouterr().err
    assert status != 0
    errors = [line for line in err.splitlines() if line.startswith("s3-retriever: error:")]
    assert len(errors) == 1 and "token_budget" in errors[0]
    assert "Traceback" not in err


def test_train_sae_then_report(
    tmp_path: Path, files: list[Path], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train-sae writes a loadable bundle; sae-report measures it and writes JSON and markdown."""
    questions = tmp_path / "questions.txt"
    questions.write_text("When does the train leave?\nHow many nurses work there?\n")
    bundle_out = tmp_path / "bundle"
    status = main(
        [
            "train-sae",
            "--data",
            str(files[0]),
            str(files[1]),
            "--model",
            str(model_dir),
            "--layers",
            "1,2",
            "--heads",
            "1:0,2:3",
            "--latents",
            "16",
            "--k",
            "4",
            "--steps",
            "20",
            "--questions",
            str(questions),
            "--out",
            str(bundle_out),
        ]
    )
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "held-out FVU" in out.out
    assert (bundle_out / "layer_01.safetensors").is_file()
    stem = tmp_path / "report" / "fidelity"
    status = main(
        [
            "sae-report",
            "--data",
            str(files[2]),
            str(files[0]),
            "--model",
            str(model_dir),
            "--sae",
            str(bundle_out),
            "--questions",
            str(questions),
            "--max-tokens",
            "300",
            "--out",
            str(stem),
        ]
    )
    out = capsys.readouterr()
    assert status == 0, out.err
    report = json.loads(stem.with_suffix(".json").read_text())
    assert set(report["layers"]) == {"1", "2"}
    assert set(report["layers"]["2"]["logit_fidelity"]) == {"2:3"}
    assert 0.0 < report["layers"]["1"]["fvu"] < 10.0
    assert report["perplexity"]["original"] > 1.0
    assert stem.with_suffix(".md").read_text().startswith("| layer |")


def test_train_sae_retrieval_key_heads_and_mixed_metric(
    tmp_path: Path, files: list[Path], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--key-heads retrieval records the KV heads each SAE trained on; --metric mixed saves the
    key maps; --key-heads retrieval without --heads is a one-line error."""
    questions = tmp_path / "questions.txt"
    questions.write_text("When does the train leave?\nHow many nurses work there?\n")
    common = ["train-sae", "--data", str(files[0]), "--model", str(model_dir), "--layers", "1,2"]
    common += ["--latents", "16", "--k", "2", "--steps", "10", "--questions", str(questions)]
    out_dir = tmp_path / "bundle"
    extra = ["--heads", "1:0,2:3", "--key-heads", "retrieval", "--metric", "mixed"]
    status = main([*common, *extra, "--logit-weight", "0.7", "--out", str(out_dir)])
    assert status == 0, capsys.readouterr().err
    bundle = SAEBundle.load(out_dir)
    assert bundle.info["key_kv_heads"] == {"1": [0], "2": [1]}
    assert set(bundle.key_maps) == {1, 2}
    capsys.readouterr()
    status = main([*common, "--key-heads", "retrieval", "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert status != 0 and "retrieval_heads" in err and "Traceback" not in err


def test_train_sae_values_checkpoint_resume_and_report(
    tmp_path: Path, files: list[Path], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--values writes a value bundle at its own k; --resume continues the checkpoints; the
    report then measures values and the dual-budget perplexities."""
    out, checkpoints = tmp_path / "bundle", tmp_path / "checkpoints"
    common = [
        "train-sae",
        "--data",
        *map(str, files[:2]),
        "--model",
        str(model_dir),
        *["--layers", "1", "--latents", "16", "--k-keys", "2", "--values", "--k-values", "4"],
        "--checkpoint",
        str(checkpoints),
        "--out",
        str(out),
    ]
    assert main([*common, "--steps", "10"]) == 0, capsys.readouterr().err
    assert "layer 1 values: held-out FVU" in capsys.readouterr().out
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["keys_layer_01.safetensors", "values_layer_01.safetensors"]
    values = json.loads((out / "values" / "config.json").read_text())
    assert values["layers"]["1"]["k"] == 4 and values["info"]["vectors"] == "values"
    assert json.loads((out / "config.json").read_text())["layers"]["1"]["k"] == 2
    assert main([*common, "--steps", "20", "--resume"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    status = main([*common[:-4], "--out", str(out), "--steps", "5", "--resume"])
    assert status == 2
    assert "--checkpoint" in _one_error_line(capsys.readouterr().err)
    stem = tmp_path / "report"
    status = main(
        [
            "sae-report",
            "--data",
            str(files[2]),
            "--model",
            str(model_dir),
            "--sae",
            str(out),
            "--max-tokens",
            "200",
            "--out",
            str(stem),
        ]
    )
    assert status == 0, capsys.readouterr().err
    report = json.loads(stem.with_suffix(".json").read_text())
    assert report["layers"]["1"]["values"]["k"] == 4
    assert {(r["k_keys"], r["k_values"]) for r in report["perplexity"]["dual_budget"]} == {(2, 4)}
    markdown = stem.with_suffix(".md").read_text()
    assert "| 1 | values |" in markdown and "| k keys | k values |" in markdown


def test_index_compact_flag_asks_for_a_compact_retriever(
    tmp_path: Path, files: list[Path], tiny_from_pretrained: list[Any]
) -> None:
    """--compact reaches from_pretrained (shipped compact SAEs, postings only); without it, the
    default retriever is asked for."""
    assert main(["index", str(files[0]), "--out", str(tmp_path / "a"), "--compact"]) == 0
    assert main(["index", str(files[0]), "--out", str(tmp_path / "b")]) == 0
    assert [kwargs["compact"] for _, kwargs in tiny_from_pretrained] == [True, False]


def test_train_sae_pursuit_coding(
    tmp_path: Path, files: list[Path], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--key-coding pursuit writes a pursuit-coded bundle whose reports say so."""
    out_dir = tmp_path / "bundle"
    args = ["train-sae", "--data", str(files[0]), "--model", str(model_dir), "--layers", "1"]
    args += ["--latents", "16", "--k-keys", "2", "--steps", "10", "--out", str(out_dir)]
    status = main([*args, "--key-coding", "pursuit", "--pursuit-rounds", "2"])
    assert status == 0, capsys.readouterr().err
    bundle = SAEBundle.load(out_dir)
    assert bundle.key_coding == "pursuit"
    assert [r["coding"] for r in bundle.info["reports"]] == ["pursuit"]

"""The bad-input matrix of docs/reliability.md: each case gets a clear error or a defined result.

Cases already covered elsewhere are listed in docs/reliability.md with their test; this file
holds the rest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s3_retriever import ModelError, S3Retriever, SAEError
from s3_retriever.cli import main
from s3_retriever.retriever import Mode
from s3_retriever.sae.bundle import SAEBundle, SAEConfig, TopKSAE
from s3_retriever.testing import HEAD_DIM, N_HEADS
from tests.conftest import RetrieverFactory, hit_tokens, tiny_config
from tests.test_retriever import check_hits

MODES: tuple[Mode, ...] = ("hybrid", "s3", "bm25")

CONTROL_TEXT = (
    "\ufeffStart\x00of\x01file.\x1b[31mRed\x1b[0m text\r\nWindows line.\rOld Mac line.\x7f\n"
    "\u0301Leading combining mark, then e\u0301\u0302\u0303 stacked.\u200b Zero\u200dwidth.\n"
    "\u202eRTL override\u202c and \u2066isolate\u2069; Devanagari \u0928\u092e\u0938\u094d\u0924"
    "\u0947, Hangul \u1112\u1161\u11ab (jamo) and \ud55c\uae00.\n"
    "Emoji: \U0001f469\U0001f3fd\u200d\U0001f52c \U0001f3f3\ufe0f\u200d\U0001f308 "
    "keycap 1\ufe0f\u20e3 tag-flag \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063"
    "\U000e0074\U000e007f.\n"
    "Math \U0001d400\U0001d401 and surrogate-range-looking text \\ud800 stays literal.\f"
    "Form feed\u2029paragraph separator\u0085next line."
)
"""Control characters, BOM, CRLF and CR, combining marks, ZWJ emoji, bidi controls, astral
planes: every offset must still slice the source exactly."""


@pytest.fixture(scope="module")
def messy(make_retriever: RetrieverFactory, corpus: dict[str, str]) -> tuple[S3Retriever, dict]:
    texts = {"control": CONTROL_TEXT, "trains": corpus["trains"], "tiny": "Hi.", "one": "x"}
    retriever = make_retriever()
    retriever.add_documents(list(texts.values()), ids=list(texts))
    return retriever, texts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "question", ["Red text line", "combining mark stacked", "emoji keycap flag", "x", "Hi"]
)
def test_control_characters_and_scripts_keep_exact_offsets(
    messy: tuple[S3Retriever, dict], mode: Mode, question: str
) -> None:
    """Hits over control characters and mixed scripts slice the source exactly, within budget."""
    retriever, texts = messy
    for budget in (3, 40, 10_000):
        hits = retriever.retrieve(question, token_budget=budget, mode=mode)
        check_hits(retriever, hits, texts, budget, mode)
    whole = retriever.retrieve(question, token_budget=10_000, mode="s3")
    assert {h.doc_id for h in whole} >= {"control", "trains"}


def test_very_short_documents_are_retrievable(messy: tuple[S3Retriever, dict]) -> None:
    """One-character and one-sentence documents get units and can be returned whole."""
    retriever, texts = messy
    hits = retriever.retrieve("x", token_budget=10_000, mode="s3")
    by_doc = {h.doc_id: h for h in hits}
    assert by_doc["one"].text == "x"
    assert by_doc["tiny"].text == "Hi."


def test_budget_smaller_than_every_unit_gives_no_hits(make_retriever: RetrieverFactory) -> None:
    """A span is never cut below a unit: if no unit fits the budget, the result is []."""
    retriever = make_retriever()
    text = "Supercalifragilisticexpialidocious antidisestablishmentarianism. " * 3
    retriever.add_documents([text], ids=["long-words"])
    smallest = int(retriever.index.corpus.unit_token_counts().min())
    assert smallest > 2
    for mode in MODES:
        assert retriever.retrieve("antidisestablishmentarianism", token_budget=2, mode=mode) == []
        hits = retriever.retrieve("antidisestablishmentarianism", token_budget=smallest, mode=mode)
        assert all(hit_tokens(retriever, h) <= smallest for h in hits)


# ------------------------------------------------------------------------------- invalid text


def test_unpaired_surrogates_are_refused_with_advice(make_retriever: RetrieverFactory) -> None:
    """Text decoded from invalid UTF-8 with surrogateescape is refused, not passed to the
    tokenizer (which failed with an unrelated TypeError), in documents, ids and queries."""
    retriever = make_retriever()
    with pytest.raises(ValueError, match=r"texts\[1\].*surrogate.*character 4"):
        retriever.add_documents(["fine", "bad \udcff byte"], ids=["a", "b"])
    with pytest.raises(ValueError, match=r"ids\[0\].*surrogate"):
        retriever.add_documents(["fine"], ids=["\ud800"])
    assert len(retriever) == 0
    retriever.add_documents(["A sentence to search."], ids=["a"])
    for mode in MODES:
        with pytest.raises(ValueError, match="query.*surrogate.*errors='replace'"):
            retriever.retrieve("search \udcc3\udca9", mode=mode)


def test_invalid_utf8_question_on_the_command_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_retriever: RetrieverFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Python hands invalid argv bytes over as surrogates; the CLI prints one error line."""
    retriever = make_retriever()
    retriever.add_documents(["The train leaves at seven."], ids=["t"])
    monkeypatch.setattr(S3Retriever, "load", classmethod(lambda cls, *a, **k: retriever))
    question = b"caf\xe9 train".decode("utf-8", errors="surrogateescape")
    status = main(["query", str(tmp_path), question])
    err = capsys.readouterr().err.splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("s3-retriever: error: query holds an unpaired")


# ------------------------------------------------------------------------------- ids, top_k


@pytest.mark.parametrize("bad_id", [None, ""])
def test_missing_ids_are_refused(make_retriever: RetrieverFactory, bad_id: Any) -> None:
    """None would silently become the id 'None' and '' makes hit ids ambiguous: both refused."""
    retriever = make_retriever()
    with pytest.raises(ValueError, match=r"ids\[1\].*non-empty id"):
        retriever.add_documents(["one", "two"], ids=["fine", bad_id])
    assert len(retriever) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 2.5}, "top_k must be an int, got float"),
        ({"top_k": True}, "top_k must be an int, got bool"),
        ({"top_k": "3"}, "top_k must be an int, got str"),
        ({"token_budget": 10.5}, "token_budget must be an int, got float"),
        ({"token_budget": None}, "token_budget must be an int, got NoneType"),
    ],
)
def test_non_integer_limits_are_refused(
    indexed: S3Retriever, kwargs: dict[str, Any], match: str
) -> None:
    """Floats and bools were silently truncated or compared; now they raise TypeError."""
    with pytest.raises(TypeError, match=match):
        indexed.retrieve("When does the train leave?", **kwargs)


def test_numpy_integer_limits_are_accepted(indexed: S3Retriever) -> None:
    """Integers from numpy (e.g. a computed budget) behave exactly like Python ints."""
    question = "When does the train leave?"
    assert indexed.retrieve(question, top_k=np.int64(2), token_budget=np.int32(60)) == (
        indexed.retrieve(question, top_k=2, token_budget=60)
    )


# ------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({1: "int key"}, "would change"),
        ({"pair": (1, 2)}, "would change"),
        ({"nested": {"deep": (1,)}}, "would change"),
        ({"score": math.nan}, "not JSON-serialisable"),
        ({"score": math.inf}, "not JSON-serialisable"),
        ({"when": b"bytes"}, "not JSON-serialisable"),
    ],
)
def test_metadata_that_json_would_change_is_refused(
    make_retriever: RetrieverFactory, metadata: dict[Any, Any], match: str
) -> None:
    """Metadata must come back from save/load unchanged, so lossy values are refused up front."""
    retriever = make_retriever()
    with pytest.raises(TypeError, match=match):
        retriever.add_documents(["text"], ids=["d"], metadatas=[metadata])
    assert len(retriever) == 0


def test_accepted_metadata_survives_save_and_load(
    model_dir: Path, bundle_dir: Path, tmp_path: Path
) -> None:
    """Nested lists, dicts, None, bools, unicode keys: identical after a round trip."""
    metadata = {"é🙂": [1, 2.5, None, True, {"k": ["v"]}], "n": -3, "s": "\x00"}
    retriever = S3Retriever.from_pretrained(model_dir, sae_path=bundle_dir, config=tiny_config())
    retriever.add_documents(["Some text."], ids=["d"], metadatas=[metadata])
    retriever.save(tmp_path / "index")
    restored = S3Retriever.load(tmp_path / "index", model_path=model_dir)
    assert restored.index.corpus.metadatas == [metadata]
    assert restored.retrieve("text", mode="bm25")[0].metadata == metadata


# ------------------------------------------------------------------------------- models, SAEs


def _folder_with_config(root: Path, config: dict[str, Any]) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: _folder_with_config(p / "bert", {"model_type": "bert"}), "not supported"),
        (lambda p: _folder_with_config(p / "empty", {}), "config|supported"),
        (lambda p: (p / "nothing").mkdir() or p / "nothing", "Cannot read a model config"),
        (lambda p: (p / "file.bin").write_bytes(b"\x00") and p / "file.bin", "not a folder"),
    ],
)
def test_unsupported_model_paths_are_refused(tmp_path: Path, make: Any, match: str) -> None:
    """Something that is not a supported causal LM raises ModelError naming what to pass."""
    with pytest.raises(ModelError, match=match):
        S3Retriever.from_pretrained(make(tmp_path))


def _bundle_with(model_id: str, d_in: int, layer: int, means_shape: tuple[int, int]) -> SAEBundle:
    sae = TopKSAE(SAEConfig(d_in=d_in, n_latents=8, k=2))
    import torch

    return SAEBundle(
        model_id=model_id, saes={layer: sae}, query_means={layer: torch.zeros(*means_shape)}
    )


@pytest.mark.parametrize(
    ("d_in", "layer", "means_shape", "match"),
    [
        (HEAD_DIM * 2, 1, (N_HEADS, HEAD_DIM), "head dimension"),
        (HEAD_DIM, 7, (N_HEADS, HEAD_DIM), "layers"),
        (HEAD_DIM, 1, (N_HEADS + 1, HEAD_DIM), "Query means"),
    ],
)
def test_sae_bundle_that_does_not_fit_the_model_is_refused(
    model_dir: Path,
    tmp_path: Path,
    d_in: int,
    layer: int,
    means_shape: tuple[int, int],
    match: str,
) -> None:
    """from_pretrained with SAEs of another shape raises SAEError before anything is scanned."""
    folder = tmp_path / "bundle"
    _bundle_with(model_dir.name, d_in, layer, means_shape).save(folder)
    with pytest.raises(SAEError, match=match):
        S3Retriever.from_pretrained(model_dir, sae_path=folder, config=tiny_config())


@pytest.mark.parametrize("texts", [["0"], ["😀 🎉", "a"], ["7", "", "-"]])
def test_documents_without_any_bm25_term(
    make_retriever: RetrieverFactory, texts: list[str]
) -> None:
    """Units with no BM25 term at all (one digit, emoji, punctuation) made bm25s fail with
    'max() arg is an empty sequence'; now BM25 scores zero: hybrid ranks by S3, bm25 gives []."""
    retriever = make_retriever()
    ids = [f"d{i}" for i in range(len(texts))]
    retriever.add_documents(texts, ids=ids)
    assert retriever.retrieve("harvest in the valley", mode="bm25") == []
    hits = retriever.retrieve("harvest in the valley", mode="hybrid", token_budget=50)
    check_hits(retriever, hits, dict(zip(ids, texts, strict=True)), 50, "hybrid")
    assert hits or not any(t.strip() for t in texts)

"""The evaluation harness behind ``s3-retriever eval``: tasks x methods x budgets, one report.

Each example's documents are indexed once per method family (the S3 scan is shared by every
``s3:*``/``hybrid:*`` method); every method then retrieves at every token budget, counted with
the scanned model's tokenizer. A sweep (``--sweep scoring.temperature=0.5,1,2``) reruns the
retrieval for each value and re-indexes only when the value changes how documents are scanned.

The report is a JSON file with every setting and number, a markdown table and a PNG plot of
recall against budget per method.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.config import RetrieverConfig
from s3_retriever.console import progress_bar
from s3_retriever.eval.baselines import DenseBaseline
from s3_retriever.eval.chunking import CHUNK_TOKENS
from s3_retriever.eval.corpus_tasks import load_hotpotqa_corpus, load_qmsum_corpus
from s3_retriever.eval.data import (
    EvalExample,
    load_hotpotqa_haystacks,
    load_kv_retrieval,
    load_leval,
    load_qmsum,
)
from s3_retriever.eval.methods import BaselineIndex, EngineIndex, Retrieved, engine_method
from s3_retriever.eval.metrics import answer_recall, evidence_recall, full_support, qa_f1
from s3_retriever.eval.paraphrase_needles import FOUND_THRESHOLD, load_needles
from s3_retriever.eval.qa import Generator, render_context
from s3_retriever.eval.tally import Tally
from s3_retriever.model.scan import tokenize
from s3_retriever.retriever import S3Retriever

__all__ = ["EvalSettings", "TASKS", "apply_override", "run_eval"]

Loader = Callable[[Path, int, int], list[EvalExample]]


def _window(examples: list[EvalExample], n: int, skip: int) -> list[EvalExample]:
    return examples[skip : skip + n]


TASKS: dict[str, Loader] = {
    "hotpotqa-3k": lambda d, n, s: load_hotpotqa_haystacks(d, n, target_words=3000, skip=s),
    "hotpotqa-9k": lambda d, n, s: load_hotpotqa_haystacks(d, n, target_words=9000, skip=s),
    "qmsum": lambda d, n, s: _window(load_qmsum(d), n, s),
    "kv": lambda d, n, s: load_kv_retrieval(d, n + s)[s:],
    "leval/natural_question": lambda d, n, s: _window(load_leval(d, "natural_question"), n, s),
    "leval/scientific_qa": lambda d, n, s: _window(load_leval(d, "scientific_qa"), n, s),
    "leval/legal_contract_qa": lambda d, n, s: _window(load_leval(d, "legal_contract_qa"), n, s),
    "hotpotqa-corpus": load_hotpotqa_corpus,
    "qmsum-corpus": load_qmsum_corpus,
    "needles": load_needles,
}
"""Task name -> loader(data_dir, n_questions, skip). HotpotQA questions 0-299 are for
evaluation, 300-379 for tuning and 380-499 for SAE training (see docs/measurements.md); the
corpus and needle splits are in docs/results_corpus.md."""


# Settings under these keys are fixed when an index is built, so a sweep over them re-indexes.
_INDEX_SECTIONS = (
    "scan",
    "segment",
    "lexical",
    "retrieval_heads",
    "store_keys",
    "store_postings",
)


@dataclass
class EvalSettings:
    """Everything one evaluation run depends on; stored verbatim in its report."""

    data_dir: Path
    tasks: list[str]
    methods: list[str]
    budgets: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    n: int = 60
    skip: int = 0
    model: str | None = None
    sae: str | None = None
    overrides: list[str] = field(default_factory=list)
    """``section.field=value`` settings applied to the retriever's default config."""
    sweep: str | None = None
    """``section.field=v1,v2,...``: one result set per value."""
    qa_budgets: list[int] = field(default_factory=list)
    """Budgets at which answers are generated (empty: no end-to-end QA)."""
    generator: str | None = None
    """Bundled model name or folder for QA; None is the default scan model."""
    show_progress: bool = True
    index_cache: Path | None = None
    """Folder where engine indexes are saved and found again (``--index-cache``), so a run that
    varies only query-time settings scans nothing; None indexes every time."""

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be positive token counts, got {self.budgets}")
        if self.n < 1 or self.skip < 0:
            raise ValueError(f"n must be >= 1 and skip >= 0, got n={self.n} skip={self.skip}")


# ----------------------------------------------------------------------- config overrides


def _coerce(raw: str, current: Any, where: str) -> Any:
    if where == "retrieval_heads":
        try:
            return tuple(
                (int(a), int(b)) for a, b in (pair.split(":") for pair in raw.split(",") if pair)
            )
        except ValueError as exc:
            raise ValueError(
                f"retrieval_heads takes layer:head pairs like 8:0,8:1; got {raw!r}"
            ) from exc
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{where} takes true or false, got {raw!r}")
        return raw.lower() in ("true", "1")
    if current is None:
        return None if raw.lower() == "none" else int(raw) if raw.lstrip("-").isdigit() else raw
    try:
        return type(current)(raw)
    except ValueError as exc:
        raise ValueError(f"{where} takes a {type(current).__name__}, got {raw!r}") from exc


def apply_override(config: RetrieverConfig, assignment: str) -> RetrieverConfig:
    """Return ``config`` with one ``section.field=value`` (or ``field=value``) setting changed.

    Values are converted to the type of the current setting; the dataclasses' own checks run,
    so an invalid value fails here with the component's message.
    """
    path, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"expected section.field=value, got {assignment!r}")
    section, _, name = path.strip().partition(".")
    if not name:
        current = getattr(config, section, dataclasses.MISSING)
        if current is dataclasses.MISSING:
            raise ValueError(f"unknown setting {section!r}")
        return config.replace(**{section: _coerce(raw.strip(), current, section)})
    component = getattr(config, section, None)
    if component is None or not dataclasses.is_dataclass(component):
        raise ValueError(f"unknown settings section {section!r}")
    if name not in {f.name for f in dataclasses.fields(component)}:
        raise ValueError(f"{section} has no setting {name!r}")
    value = _coerce(raw.strip(), getattr(component, name), path)
    return config.replace(**{section: dataclasses.replace(component, **{name: value})})  # type: ignore[type-var]


SWEEP_SEPARATOR = " + "
"""Separates several sweeps in one ``--sweep``; each varies one setting from the base alone,
and settings read at query time share one index (one scan serves several levers)."""


def variants(base: RetrieverConfig, settings: EvalSettings) -> list[tuple[str, RetrieverConfig]]:
    """The configs to evaluate: the base with overrides, once per sweep value."""
    for assignment in settings.overrides:
        base = apply_override(base, assignment)
    if not settings.sweep:
        return [("default", base)]
    out: list[tuple[str, RetrieverConfig]] = []
    for sweep in settings.sweep.split(SWEEP_SEPARATOR):
        path, sep, values = sweep.strip().partition("=")
        if not sep or not values:
            raise ValueError(f"--sweep takes section.field=v1,v2,...; got {sweep!r}")
        # Head sets hold commas themselves, so they are separated by ';': 8:0,8:1;5:6
        choices = values.split(";") if path == "retrieval_heads" else values.split(",")
        out += [(f"{path}={v}", apply_override(base, f"{path}={v}")) for v in choices]
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--sweep names a setting value twice: {labels}")
    return out


def _index_key(config: RetrieverConfig) -> str:
    return json.dumps({k: config.to_dict()[k] for k in _INDEX_SECTIONS}, sort_keys=True)


# --------------------------------------------------------------------------------- running


def _groups(examples: Iterable[EvalExample]) -> list[list[EvalExample]]:
    """Examples that share their documents (QMSum, L-Eval), so each set is indexed once."""
    by_docs: dict[tuple[str, ...], list[EvalExample]] = {}
    for example in examples:
        by_docs.setdefault(tuple(example.doc_ids), []).append(example)
    return list(by_docs.values())


def _progress(total: int, show: bool, desc: str) -> Any:
    # show=True still draws only on a terminal (s3_retriever/console.py).
    return progress_bar(total, desc, "doc set", None if show else False, leave=False)


def run_eval(
    settings: EvalSettings,
    retriever: S3Retriever | None = None,
    generator: Generator | None = None,
) -> dict[str, Any]:
    """Run every task, method, budget (and sweep value); return the report as a dict.

    ``retriever`` and ``generator`` default to the models the settings name; passing them lets
    a caller reuse loaded models across runs.
    """
    if retriever is None:
        retriever = S3Retriever.from_pretrained(settings.model, sae_path=settings.sae)
    spans = dataclasses.replace(retriever.config.spans, min_relevance=0.0)  # fill every budget
    scan = dataclasses.replace(retriever.config.scan, show_progress=False)
    base_config = retriever.config.replace(scan=scan, spans=spans)
    configs = variants(base_config, settings)
    tokenizer = retriever.model.tokenizer

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def offsets(text: str) -> list[tuple[int, int]]:
        tokens = tokenize(tokenizer, text)
        return list(zip(tokens.starts.tolist(), tokens.ends.tolist(), strict=True))

    baseline_methods = [m for m in settings.methods if engine_method(m) is None]
    engine_methods = [m for m in settings.methods if engine_method(m) is not None]
    dense = DenseBaseline() if {"dense", "bm25+dense"} & set(baseline_methods) else None
    if generator is None and settings.qa_budgets:
        generator = Generator(settings.generator)
    tally = Tally()
    n_questions: dict[str, int] = {}
    tokens_per_doc_set: dict[str, list[int]] = defaultdict(list)
    for task in settings.tasks:
        examples = TASKS[task](settings.data_dir, settings.n, settings.skip)
        n_questions[task] = len(examples)
        groups = _groups(examples)
        bar = _progress(len(groups), settings.show_progress, task)
        for group in groups:
            docs = group[0].documents
            tokens_per_doc_set[task].append(sum(count_tokens(d) for d in docs))
            started = time.perf_counter()
            baselines = BaselineIndex(
                baseline_methods,
                docs,
                count_tokens,
                offsets,
                dense,
                chunk_tokens=CHUNK_TOKENS.get(task),
                loaded=retriever.model,
                heads=retriever.heads,
            )
            tally.add(
                (task, "index_seconds_per_doc", "baselines"),
                (time.perf_counter() - started) / len(docs),
            )
            built_key = None
            engine: EngineIndex | None = None
            for label, config in configs:
                if engine_methods and _index_key(config) != built_key:
                    started = time.perf_counter()
                    engine = EngineIndex(
                        retriever,
                        config,
                        docs,
                        group[0].doc_ids,
                        group[0].metadatas,
                        cache=settings.index_cache,
                        index_settings=_index_key(config),
                    )
                    tally.add(
                        (task, "index_seconds_per_doc", "s3"),
                        (time.perf_counter() - started) / len(docs),
                    )
                    built_key = _index_key(config)
                for example in group:
                    for method in settings.methods:
                        first = True
                        if engine is not None:
                            engine.forget_questions()
                        for budget in sorted(set(settings.budgets) | set(settings.qa_budgets)):
                            started = time.perf_counter()
                            pieces = _retrieve(
                                method, example.question, budget, config, engine, baselines
                            )
                            elapsed = time.perf_counter() - started
                            key = (label, task, method, str(budget))
                            if first:
                                # The first budget pays for the question's forward pass; the
                                # others reuse it (both the engine and rerank remember it).
                                tally.add((label, task, method, "first_latency"), elapsed)
                                first = False
                            if budget in settings.budgets:
                                tally.add((label, task, method, "latency"), elapsed)
                                _score(tally, key, pieces, example)
                            if generator is not None and budget in settings.qa_budgets:
                                prediction = generator.answer(
                                    render_context(pieces), example.question
                                )
                                tally.add((*key, "qa_f1"), qa_f1(prediction, example.answers))
                    if generator is not None:
                        whole = "\n\n".join(example.documents)
                        prediction = generator.answer(whole, example.question)
                        tally.add(
                            (label, task, "full-context", "qa_f1"),
                            qa_f1(prediction, example.answers),
                        )
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return _report(settings, retriever, generator, configs, tally, n_questions, tokens_per_doc_set)


def _retrieve(
    method: str,
    question: str,
    budget: int,
    config: RetrieverConfig,
    engine: EngineIndex | None,
    baselines: BaselineIndex,
) -> list[Retrieved]:
    parsed = engine_method(method)
    if parsed is None:
        return baselines.retrieve(method, question, budget)
    assert engine is not None
    return engine.retrieve(question, budget, *parsed, config=config)


def _score(
    tally: Tally, key: tuple[str, ...], pieces: Sequence[Retrieved], example: EvalExample
) -> None:
    ranges = [(p.doc, p.start, p.end) for p in pieces]
    if example.gold:
        tally.add((*key, "evidence_recall"), evidence_recall(ranges, example.gold))
        tally.add((*key, "full_support"), full_support(ranges, example.gold))
        if example.task == "needles":
            tally.add((*key, "found"), full_support(ranges, example.gold, FOUND_THRESHOLD))
    text = "\n".join(p.text for p in pieces)
    tally.add((*key, "answer_recall"), answer_recall(text, example.answers))


METRICS = ("evidence_recall", "full_support", "found", "answer_recall", "qa_f1")


def _report(
    settings: EvalSettings,
    retriever: S3Retriever,
    generator: Any,
    configs: list[tuple[str, RetrieverConfig]],
    tally: Tally,
    n_questions: dict[str, int],
    tokens: dict[str, list[int]],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, _ in configs:
        results[label] = {}
        for task in settings.tasks:
            per_method: dict[str, Any] = {}
            for method in settings.methods:
                per_budget = {}
                for budget in sorted(set(settings.budgets) | set(settings.qa_budgets)):
                    cells = {m: tally.mean((label, task, method, str(budget), m)) for m in METRICS}
                    per_budget[str(budget)] = {m: v for m, v in cells.items() if v is not None}
                per_method[method] = {
                    "budgets": per_budget,
                    "query_seconds": tally.mean((label, task, method, "latency")),
                    "first_query_seconds": tally.mean((label, task, method, "first_latency")),
                }
            full_f1 = tally.mean((label, task, "full-context", "qa_f1"))
            if full_f1 is not None:
                per_method["full-context"] = {"qa_f1": full_f1}
                for method in settings.methods:
                    for qa_budget in settings.qa_budgets:
                        cell = per_method[method]["budgets"][str(qa_budget)]
                        if "qa_f1" in cell and full_f1 > 0:
                            cell["qa_retention"] = cell["qa_f1"] / full_f1
            results[label][task] = per_method
    return {
        "date": datetime.date.today().isoformat(),
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()
        },
        "model": retriever.model.model_id,
        "sae": retriever.bundle.checksum,
        "generator": generator.name if generator is not None else None,
        "retrieval_heads": [list(h) for h in retriever.heads],
        "config": {label: config.to_dict() for label, config in configs},
        "tasks": {
            task: {
                "questions": n_questions[task],
                "doc_sets": len(tokens[task]),
                "mean_tokens": float(np.mean(tokens[task])) if tokens[task] else 0.0,
                "s3_index_builds": len(tally.values.get((task, "index_seconds_per_doc", "s3"), [])),
                "index_seconds_per_doc": {
                    family: tally.mean((task, "index_seconds_per_doc", family))
                    for family in ("s3", "baselines")
                },
            }
            for task in settings.tasks
        },
        "results": results,
    }

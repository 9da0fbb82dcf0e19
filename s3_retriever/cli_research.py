"""The research commands of the ``s3-retriever`` command line (:mod:`s3_retriever.cli`).

``train-sae`` (an SAE bundle for a model), ``sae-report`` (its fidelity) and ``eval`` (retrieval
quality against baselines). Their heavy imports happen when a command runs, so ``--help`` stays
fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s3_retriever.errors import CLIError

VALUES_SUBFOLDER = "values"
"""Where ``train-sae --values`` puts the value bundle, inside the key bundle's folder (the key
bundle's checksum covers only its own files, so retrieval sees the same bundle either way)."""


def _read_text(path: Path) -> str:
    from s3_retriever.bulk import read_text

    return read_text(path)


def cmd_train_sae(args: argparse.Namespace) -> int:
    from s3_retriever.model.loading import attention_shape, load_model
    from s3_retriever.sae.bundle import SAEConfig
    from s3_retriever.sae.recipe import train_bundles
    from s3_retriever.sae.training import TrainConfig

    if args.resume and not args.checkpoint:
        raise CLIError("--resume continues from --checkpoint DIR; pass the folder to resume from")
    texts = [_read_text(Path(p)) for p in args.data]
    loaded = load_model(args.model)
    layers = _int_list(args.layers, "--layers")
    heads = (
        [tuple(int(v) for v in h.split(":")) for h in args.heads.split(",")] if args.heads else []
    )
    _, _, _, head_dim = attention_shape(loaded.model)
    value_config = None
    if args.values:
        value_config = SAEConfig(d_in=head_dim, n_latents=args.latents, k=args.k_values)
    trained = train_bundles(
        loaded.model,
        loaded.tokenizer,
        loaded.model_id,
        texts,
        layers,
        SAEConfig(d_in=head_dim, n_latents=args.latents, k=args.k_keys),
        TrainConfig(steps=args.steps),
        max_tokens=args.max_tokens,
        retrieval_heads=[(a, b) for a, b in heads],
        question_texts=_read_lines(args.questions),
        metric=args.metric,
        logit_weight=args.logit_weight,
        key_heads=args.key_heads,
        key_coding=args.key_coding,
        pursuit_rounds=args.pursuit_rounds,
        value_sae_config=value_config,
        checkpoint_dir=args.checkpoint,
        resume=args.resume,
    )
    command = " ".join(sys.argv)
    trained.keys.info.update(
        reports=[r.__dict__ for r in trained.reports if r.vectors == "keys"], command=command
    )
    trained.keys.save(args.out)
    if trained.values is not None:
        trained.values.info.update(
            reports=[r.__dict__ for r in trained.reports if r.vectors == "values"],
            command=command,
        )
        trained.values.save(Path(args.out) / VALUES_SUBFOLDER)
    for r in trained.reports:
        print(
            f"layer {r.layer} {r.vectors}: held-out FVU {r.held_out_fvu:.4f}, "
            f"dead {r.dead_fraction:.1%}"
        )
    return 0


def _read_lines(path: str | None) -> list[str]:
    if not path:
        return []
    return [line.strip() for line in _read_text(Path(path)).splitlines() if line.strip()]


def cmd_sae_report(args: argparse.Namespace) -> int:
    from s3_retriever.model.loading import load_model
    from s3_retriever.sae.bundle import SAEBundle, shipped_bundle_dir
    from s3_retriever.sae.fidelity import build_report, write_report

    texts = [_read_text(Path(p)) for p in args.data]
    questions = _read_lines(args.questions)
    loaded = load_model(args.model)
    folder = Path(args.sae) if args.sae else shipped_bundle_dir(loaded.model_id)
    bundle = SAEBundle.load(folder)
    values_folder = Path(args.values) if args.values else folder / VALUES_SUBFOLDER
    values = None
    if args.values or (values_folder / "config.json").is_file():
        values = SAEBundle.load(values_folder)
    report = build_report(loaded, bundle, texts, questions, args.max_tokens, values=values)
    markdown, plotted = write_report(report, args.out)
    print(markdown)
    if not plotted:
        print("(install matplotlib for the elbow plot: pip install 's3-retriever[plots]')")
    return 0


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise CLIError(f"{what} takes comma-separated integers, got {text!r}") from exc


def cmd_eval(args: argparse.Namespace) -> int:
    from s3_retriever.eval.data import default_data_dir
    from s3_retriever.eval.harness import EvalSettings, run_eval
    from s3_retriever.eval.methods import parse_methods
    from s3_retriever.eval.report import write_report

    data = Path(args.data) if args.data else default_data_dir()
    if data is None or not data.is_dir():
        raise CLIError(
            f"evaluation data folder {data or '(none found)'} does not exist; pass --data DIR "
            "or set $S3_EVAL_DATA"
        )
    settings = EvalSettings(
        data_dir=data,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        methods=parse_methods(args.methods),
        budgets=_int_list(args.budgets, "--budgets"),
        n=args.n,
        skip=args.skip,
        model=args.model,
        sae=args.sae,
        overrides=args.overrides,
        sweep=args.sweep,
        qa_budgets=_int_list(args.qa_budgets, "--qa-budgets"),
        generator=args.generator,
        index_cache=Path(args.index_cache) if args.index_cache else None,
    )
    report = run_eval(settings)
    for path in write_report(report, Path(args.out), _eval_command(args)):
        print(f"wrote {path}")
    return 0


def _eval_command(args: argparse.Namespace) -> str:
    """The eval command line that reproduces a run, rebuilt from its parsed arguments."""
    parts = ["s3-retriever eval"]
    for name in ("data", "tasks", "methods", "budgets", "n", "skip", "model", "sae"):
        value = getattr(args, name)
        if value is not None:
            parts.append(f"--{name} {value}")
    parts += [f"--set {o}" for o in args.overrides]
    if args.sweep:
        parts.append(f"--sweep '{args.sweep}'")
    if args.qa_budgets:
        parts.append(f"--qa-budgets {args.qa_budgets}")
    if args.generator:
        parts.append(f"--generator {args.generator}")
    parts.append(f"--out {args.out}")
    return " ".join(parts)

"""An evaluation report written out: markdown tables, the elbow plot and the JSON record.

:func:`s3_retriever.eval.harness.run_eval` builds the report; this module only renders it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown tables: one per sweep value and task."""
    settings = report["settings"]
    budgets = settings["budgets"]
    lines = [
        f"Evaluation {report['date']}: model {report['model']}, heads "
        f"{report['retrieval_heads']}, {settings['n']} questions per task from {settings['skip']}.",
        "",
    ]
    for label, tasks in report["results"].items():
        for task, methods in tasks.items():
            info = report["tasks"][task]
            lines += [
                f"### {task}" + ("" if label == "default" else f" ({label})"),
                "",
                f"{info['questions']} questions over {info['doc_sets']} document sets, mean "
                f"{info['mean_tokens']:.0f} tokens.",
                "",
            ]
            metric = _main_metric(methods)
            cold = any(c.get("first_query_seconds") is not None for c in methods.values())
            header = [f"{metric.replace('_', ' ')} @{b}" for b in budgets]
            header += ["query ms"] + (["first query ms"] if cold else [])
            lines += ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
            for method, cell in methods.items():
                if method == "full-context":
                    continue
                values = [cell["budgets"][str(b)].get(metric) for b in budgets]
                row = [f"{v:.3f}" if v is not None else "-" for v in values]
                seconds = cell.get("query_seconds")
                row.append(f"{1000 * seconds:.0f}" if seconds is not None else "-")
                if cold:
                    seconds = cell.get("first_query_seconds")
                    row.append(f"{1000 * seconds:.0f}" if seconds is not None else "-")
                lines.append(f"| {method} | " + " | ".join(row) + " |")
            lines.append("")
            qa_rows = [
                (m, b, c)
                for m, cell in methods.items()
                if m != "full-context"
                for b, c in cell["budgets"].items()
                if "qa_f1" in c
            ]
            if qa_rows:
                full = methods.get("full-context", {}).get("qa_f1")
                lines += [
                    f"End-to-end QA F1 ({report['generator']}); full context: "
                    + (f"{full:.3f}" if full is not None else "-"),
                    "",
                    "| method | budget | F1 | retention |",
                    "|---|---|---|---|",
                ]
                for method, budget, cell in qa_rows:
                    retention = cell.get("qa_retention")
                    lines.append(
                        f"| {method} | {budget} | {cell['qa_f1']:.3f} | "
                        + (f"{retention:.2f}" if retention is not None else "-")
                        + " |"
                    )
                lines.append("")
    lines.append(f"Reproduce: `{command}`")
    return "\n".join(lines) + "\n"


def _main_metric(methods: dict[str, Any]) -> str:
    """The metric a task's table shows: needles found, else evidence, else answer recall."""
    for metric in ("found", "evidence_recall"):
        if _has(methods, metric):
            return metric
    return "answer_recall"


def _has(methods: dict[str, Any], metric: str) -> bool:
    return any(
        metric in budget_cell
        for cell in methods.values()
        for budget_cell in cell.get("budgets", {}).values()
    )


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Recall against budget, one panel per task, one line per method; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    label = next(iter(report["results"]))
    tasks = report["results"][label]
    budgets = report["settings"]["budgets"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, (task, methods) in zip(axes[0], tasks.items(), strict=True):
        metric = _main_metric(methods)
        for method, cell in methods.items():
            if method == "full-context":
                continue
            ys = [cell["budgets"][str(b)].get(metric) for b in budgets]
            style = "-" if method.startswith(("s3", "hybrid")) else "--"
            ax.plot(budgets, ys, style, marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("token budget")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: Path, command: str) -> list[Path]:
    """Write ``<out>.json``, ``<out>.md`` and ``<out>.png`` (when matplotlib is installed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps({**report, "command": command}, indent=1) + "\n")
    written.append(json_path)
    md_path = out.with_suffix(".md")
    md_path.write_text(markdown(report, command))
    written.append(md_path)
    png = plot(report, out.with_suffix(".png"))
    if png is not None:
        written.append(png)
    return written

"""Shared plumbing for the benchmark scripts: hardware description and result files.

Every benchmark writes ``docs/results/bench_<name>.json`` (all numbers, settings, date, hardware
and the command that reproduces it) and ``docs/results/bench_<name>.md`` (the table shown in
docs/performance.md). Figures are ratios against a peer measured in the same run, so the machine
they ran on matters less than it would for absolute times; GPU figures also carry the device name.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent.parent / "docs" / "results"


def hardware() -> dict[str, Any]:
    """Describe the machine a benchmark ran on, in the fields the result tables print."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def command_line() -> str:
    """The command that reproduces this run, as typed from the project root.

    ``python -m benchmarks.x`` leaves the module's file path in ``sys.argv[0]``; it is written
    back as ``-m benchmarks.x`` so the command works from any checkout.
    """
    program = Path(sys.argv[0]).resolve() if sys.argv else Path()
    head = [sys.argv[0]] if sys.argv else []
    if program.parent == Path(__file__).resolve().parent and program.suffix == ".py":
        head = ["-m", f"benchmarks.{program.stem}"]
    return " ".join(shlex.quote(part) for part in ["python", *head, *sys.argv[1:]])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render rows as a GitHub markdown table; floats keep three significant decimals."""

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(
    name: str,
    payload: dict[str, Any],
    table: str,
    out_dir: Path = RESULTS_DIR,
) -> tuple[Path, Path]:
    """Write ``bench_<name>.json`` and ``bench_<name>.md``; returns both paths.

    ``payload`` holds the measured numbers and settings; date, hardware and command are added
    here so every result file carries them the same way.
    """
    record = {
        "benchmark": name,
        "date": datetime.date.today().isoformat(),
        "command": command_line(),
        "hardware": hardware(),
        **payload,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"bench_{name}.json"
    md_path = out_dir / f"bench_{name}.md"
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    hw = record["hardware"]
    where = hw.get("gpu") or f"{hw['processor']}, {hw['cpu_count']} cores"
    md_path.write_text(
        f"{table}\n\nMeasured {record['date']} on {where} (torch {hw['torch']}). "
        f"Reproduce: `{record['command']}`\n"
    )
    print(table)
    return json_path, md_path

"""Writers for tiny evaluation-data fixtures in the shared data's formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: list[dict[str, Any]], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def hotpot_row(q: int, shared: dict[str, Any] | None = None) -> dict[str, Any]:
    contexts = [
        {
            "id": str(j),
            "title": f"Title {q}-{j}",
            "paragraph_text": f"Paragraph {j} of question {q} has exactly eight words here.",
            "is_supporting": j < 2,
        }
        for j in range(3)
    ]
    if shared is not None:
        contexts.append(shared)
    return {
        "question_id": f"q{q}",
        "question_text": f"Question number {q}?",
        "answers_objects": [{"number": "", "spans": [f"answer {q}"]}],
        "contexts": contexts,
    }

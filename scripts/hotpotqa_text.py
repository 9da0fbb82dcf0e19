"""Write the HotpotQA paragraphs (and questions) of a range of questions as plain text files.

`s3-retriever train-sae` and `s3-retriever sae-report` read UTF-8 text files; this turns the
shared evaluation data into such files without copying it into the repository (write them under
the git-ignored runs/):

    python scripts/hotpotqa_text.py --data ../shared/data --first 380 --last 500 \\
        --max-bytes 220000 --out runs/qwen/train.txt --questions-out runs/qwen/questions.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = "hotpotqa_dev_distractor/hotpotqa_dev_subsampled.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", type=Path)
    parser.add_argument("--first", type=int, required=True, help="first question (inclusive)")
    parser.add_argument("--last", type=int, required=True, help="last question (exclusive)")
    parser.add_argument("--max-bytes", type=int, default=None, help="cut the UTF-8 text here")
    parser.add_argument("--out", type=Path, required=True, help="paragraphs, blank-line separated")
    parser.add_argument("--questions-out", type=Path, default=None, help="questions, one a line")
    args = parser.parse_args()
    path = args.data / ROWS
    if not path.is_file():
        raise SystemExit(f"no HotpotQA rows at {path}: pass --data DIR (see ../shared/data)")
    with open(path) as handle:
        rows = [json.loads(line) for line in handle][args.first : args.last]
    seen: set[tuple[str, str]] = set()
    paragraphs = []
    for row in rows:
        for context in row["contexts"]:
            key = (context["title"], context["paragraph_text"])
            if key not in seen:
                seen.add(key)
                paragraphs.append(f"{context['title']}\n{context['paragraph_text']}")
    data = "\n\n".join(paragraphs).encode("utf-8")[: args.max_bytes]
    # A cut inside a multi-byte character drops that character.
    text = data.decode("utf-8", errors="ignore")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    if args.questions_out:
        args.questions_out.write_text("\n".join(row["question_text"] for row in rows) + "\n")
    print(f"wrote {len(text):,} characters of {len(rows)} questions to {args.out}")


if __name__ == "__main__":
    main()

"""Print a Python code block of README.md, so CI runs exactly the code the README shows.

    python scripts/readme_code.py "## Python" > quickstart.py

prints the first ```python block after the heading given (default ``## Python``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def code_after(text: str, heading: str) -> str:
    """The first ```python block after the line ``heading``."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise SystemExit(f"README.md has no heading {heading!r}") from None
    block: list[str] | None = None
    for line in lines[start + 1 :]:
        if block is None and line.strip() == "```python":
            block = []
        elif block is not None and line.strip() == "```":
            return "\n".join(block) + "\n"
        elif block is not None:
            block.append(line)
    raise SystemExit(f"no ```python block after {heading!r} in README.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heading", nargs="?", default="## Python")
    sys.stdout.write(code_after(README.read_text(encoding="utf-8"), parser.parse_args().heading))


if __name__ == "__main__":
    main()

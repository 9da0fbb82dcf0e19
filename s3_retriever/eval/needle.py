"""Needle in a haystack: one planted sentence that a question can only reach by meaning.

The question shares one word ("lighthouse") with the needle; colour/purple, repainted/painted and
keeper's tower/lighthouse on Skellig Point must be matched by the model. The haystack is Python's
language reference (``pydoc_data.topics``, on every Python install), so the test needs no data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NEEDLE = (
    "In the spring of 1987 the keeper of the lighthouse on Skellig Point painted its tower "
    "a vivid purple."
)
QUESTION = "What colour was the lighthouse repainted?"
DEPTHS = (0.0, 0.11, 0.22, 0.33, 0.44, 0.55, 0.66, 0.77, 0.88, 1.0)
"""Where the needle goes, as a share of the haystack's length."""


def reference_text(min_chars: int) -> str:
    """Real English prose: the Python language reference topics, repeated to ``min_chars``."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name].strip() for name in sorted(topics))
    while len(text) < min_chars:
        text = text + "\n\n" + text
    return text


def plant(haystack: str, depth: float) -> str:
    """``haystack`` with the needle as its own paragraph at the paragraph break before ``depth``."""
    cut = int(len(haystack) * depth)
    boundary = haystack.rfind("\n\n", 0, cut) if depth < 1.0 else len(haystack)
    boundary = max(boundary, 0)
    return haystack[:boundary] + "\n\n" + NEEDLE + "\n\n" + haystack[boundary:]


def needle_found(hits: Sequence[Any], text: str) -> bool:
    """Whether one of the hits (``start_char``, ``end_char``) covers the whole needle."""
    start = text.index(NEEDLE)
    return any(h.start_char <= start and start + len(NEEDLE) <= h.end_char for h in hits)

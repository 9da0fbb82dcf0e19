"""Question -> question vectors: the pre-RoPE queries of the retrieval heads for a question.

The question is written with the search's template, tokenized and read by the same scan as the
documents; with ``query_tokens="content"`` only the tokens of content words vote.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from s3_retriever.model.scan import Scanner, tokenize
from s3_retriever.search.settings import SearchSettings

_QUERY_CACHE_SIZE = 32
"""Questions whose query projections an encoder remembers (a few MB at most)."""

# English function words: their attention spreads over the whole context instead of pointing.
# fmt: off
_STOP_WORDS = frozenset((
    "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "from", "with", "about", "as",
    "into", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "done",
    "have", "has", "had", "what", "which", "who", "whom", "whose", "when", "where", "why", "how",
    "that", "this", "these", "those", "it", "its", "and", "or", "but", "not", "no", "if", "then",
    "than", "so", "such", "can", "could", "would", "should", "will", "shall", "may", "might",
    "must", "there", "their", "they", "them", "he", "she", "his", "her", "him", "we", "our", "us",
    "you", "your", "i", "me", "my",
))
# fmt: on


def content_token_indices(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of tokens inside a content word (not a stop word, has a letter or digit)."""
    keep = []
    for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        left, right = start, end
        while left < right and text[left].isspace():
            left += 1
        while left > 0 and text[left - 1].isalnum():
            left -= 1
        while right < len(text) and text[right].isalnum():
            right += 1
        word = text[left:right].strip().lower()
        if any(ch.isalnum() for ch in word) and word not in _STOP_WORDS:
            keep.append(index)
    return np.asarray(keep, dtype=np.int64)


class QuestionEncoder:
    """Question vectors of ``heads`` ((layer, query head) pairs), read by ``scanner``."""

    def __init__(self, scanner: Scanner, tokenizer: Any, heads: Sequence[tuple[int, int]]) -> None:
        self.scanner = scanner
        self.tokenizer = tokenizer
        self.heads = tuple(heads)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, dict[int, Any]] = OrderedDict()

    def _projected_queries(self, text: str, input_ids: np.ndarray) -> dict[int, Any]:
        """The model's query projections of ``text``, remembered for the last few questions.

        RAG apps and evaluations ask the same question at several budgets and modes; the
        question's forward pass is most of a query's time on a small index.
        """
        cached = self._cache.get(text)
        if cached is None:
            cached = self.scanner.project_queries(input_ids)
            with self._lock:
                self._cache[text] = cached
                while len(self._cache) > _QUERY_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return cached

    def vectors(self, query: str, settings: SearchSettings) -> dict[tuple[int, int], np.ndarray]:
        """Pre-RoPE query vectors of the question for every retrieval head."""
        text = settings.query_template.format(question=query)
        tokens = tokenize(self.tokenizer, text)
        if len(tokens) == 0:
            return {}
        per_layer = self._projected_queries(text, tokens.input_ids)
        # A question longer than one chunk is read by its last chunk only.
        first = len(tokens) - next(iter(per_layer.values())).shape[0]
        keep = np.arange(len(tokens) - first)
        if settings.scoring.query_tokens == "content":
            content = content_token_indices(text, tokens.starts, tokens.ends)
            content = content[content >= first] - first
            if len(content):
                keep = content
        return {
            (layer, head): per_layer[layer][keep, head, :].numpy() for layer, head in self.heads
        }

"""``rerank``: the in-context attention re-ranker (ICR, QRHead) as a peer of the engine.

In-context re-ranking (Chen et al., arXiv 2410.02642) and QRHead (arXiv 2506.09944) put the
candidate passages of a first-stage retriever into one prompt, followed by the question, and
rank each passage by the attention that chosen heads pay from the question's tokens to the
passage's tokens. The attention a head pays to a passage under a content-free query (``N/A``)
is subtracted, which removes what the head attends to regardless of the question (position,
the first tokens, long passages).

Here the first stage is BM25 over the same 128-token chunks as the other baselines, the model
is the engine's own loaded model and the heads are its retrieval heads, so the comparison with
S3-Pure isolates what the engine changes: reading attention from an index of stored keys
instead of from a prompt rebuilt for every question.

The passages are read once per question: the prompt up to ``Query:`` is run once with a key
cache, then the question and the calibration query are each run on top of it (the cache is cut
back in between). Layers above the deepest retrieval head are never computed, because the
attention of a layer does not depend on the layers after it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from s3_retriever.eval.baselines import BM25Baseline, _BudgetedRetriever, _UnitStore
from s3_retriever.model.loading import LoadedModel, decoder_layers

__all__ = ["AttentionReranker", "DEFAULT_CANDIDATES"]

DEFAULT_CANDIDATES = 30
"""BM25 chunks read in context per question; ICR and QRHead use 20-50."""

CALIBRATION_QUERY = "N/A"
"""ICR's content-free query."""

_HEADER = "Here are some paragraphs:\n\n"
_TRAILER = (
    "Please find information that is relevant to the following query in the paragraphs "
    "above.\n\nQuery:"
)
# Room left for the question after the passages, in tokens.
_QUESTION_ROOM = 256


class _Stop(Exception):
    """Raised after the deepest layer needed, to skip the rest of the forward pass."""


class AttentionReranker(_BudgetedRetriever):
    """BM25 candidates re-ranked by calibrated query-to-chunk attention of ``heads``.

    ``heads`` are ``(layer, query head)`` pairs of ``loaded.model``. A chunk's score is the sum
    over heads of the mean over question tokens of the attention mass on the chunk's tokens,
    minus the same under :data:`CALIBRATION_QUERY`. Only the ``candidates`` best BM25 chunks
    are ranked (fewer when the prompt would not fit the model's context); the ranking of the
    last question is remembered, so asking it again at another budget costs nothing, as the
    engine remembers the question's forward pass.
    """

    score_name = "rerank"

    def __init__(
        self,
        loaded: LoadedModel,
        heads: Sequence[tuple[int, int]],
        bm25: BM25Baseline | None = None,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> None:
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        if not heads:
            raise ValueError("the re-ranker needs at least one (layer, head) pair")
        self.loaded = loaded
        self.heads = [(int(layer), int(head)) for layer, head in heads]
        self.bm25 = bm25 if bm25 is not None else BM25Baseline()
        self.candidates = candidates
        self._last: tuple[str, list[tuple[int, float]]] | None = None
        # transformers 5 renamed forward's past_key_values to cache.
        forward_parameters = inspect.signature(loaded.model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"

    @property
    def store(self) -> _UnitStore:
        return self.bm25.store

    def add_documents(self, texts: list[str], ids: list[str] | None = None) -> list[str]:
        """Index documents in the first-stage BM25; returns their ids."""
        self._last = None
        return self.bm25.add_documents(texts, ids)

    def rank_units(self, query: str) -> list[tuple[int, float]]:
        """The BM25 candidates, best calibrated attention first."""
        if self._last is not None and self._last[0] == query:
            return self._last[1]
        first_stage = self.bm25.rank_units(query)[: self.candidates]
        ranked: list[tuple[int, float]] = []
        if first_stage:
            units = [unit for unit, _ in first_stage]
            scores = self.chunk_scores(query, [self.store.unit_text(u) for u in units])
            order = np.argsort(-scores, kind="stable")
            ranked = [(units[i], float(scores[i])) for i in order if i < len(units)]
        self._last = (query, ranked)
        return ranked

    # ----------------------------------------------------------------------- attention

    def chunk_scores(self, query: str, chunks: Sequence[str]) -> np.ndarray:
        """Calibrated attention score of each chunk (chunks that did not fit get -inf)."""
        import torch

        ids, spans = self._prompt(chunks)
        model = self.loaded.model
        device = next(model.parameters()).device
        from transformers import DynamicCache

        cache = DynamicCache()
        with torch.inference_mode():
            self._forward(torch.tensor([ids], device=device), cache, capture=False)
            real = self._question_mass(query, cache, len(ids), spans, device)
            # A negative length removes that many tokens: the question's, keeping the prompt.
            cache.crop(len(ids) - cache.get_seq_length())
            calibration = self._question_mass(CALIBRATION_QUERY, cache, len(ids), spans, device)
        scores = np.full(len(chunks), -np.inf)
        scores[: len(spans)] = real - calibration
        return scores

    def _prompt(self, chunks: Sequence[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of the prompt up to ``Query:`` and each chunk's token span in it."""
        tokenizer = self.loaded.tokenizer

        def encode(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        limit = int(getattr(self.loaded.model.config, "max_position_embeddings", 8192))
        bos = getattr(tokenizer, "bos_token_id", None)
        ids = ([bos] if bos is not None else []) + encode(_HEADER)
        trailer = encode(_TRAILER)
        spans: list[tuple[int, int]] = []
        for number, chunk in enumerate(chunks, start=1):
            label, body, gap = encode(f"[{number}] "), encode(chunk), encode("\n\n")
            if len(ids) + len(label) + len(body) + len(gap) + len(trailer) + _QUESTION_ROOM > limit:
                break
            ids += label
            spans.append((len(ids), len(ids) + len(body)))
            ids += body + gap
        return ids + trailer, spans

    def _question_mass(
        self,
        query: str,
        cache: Any,
        prefix: int,
        spans: list[tuple[int, int]],
        device: Any,
    ) -> np.ndarray:
        """Per chunk: the heads' summed attention mass, averaged over the query's tokens."""
        import torch

        ids = self.loaded.tokenizer(" " + query, add_special_tokens=False)["input_ids"]
        weights = self._forward(torch.tensor([ids], device=device), cache, capture=True)
        mass = np.zeros(len(spans))
        for layer, head in self.heads:
            attention = weights[layer][0, head, :, :prefix].float()  # (query tokens, prefix)
            per_token = attention.mean(dim=0).cpu().numpy()
            mass += np.array([per_token[start:end].sum() for start, end in spans])
        return mass

    def _forward(self, input_ids: Any, cache: Any, capture: bool) -> dict[int, Any]:
        """Run the model up to the deepest head's layer, appending to ``cache``.

        With ``capture``, attention is computed eagerly so that the heads' attention weights
        can be read; they are returned per layer.
        """
        model = self.loaded.model
        layers = decoder_layers(model)
        deepest = max(layer for layer, _ in self.heads)
        weights: dict[int, Any] = {}
        handles = []

        def keep(layer: int) -> Callable[..., None]:
            def hook(_module: Any, _inputs: Any, output: Any) -> None:
                weights[layer] = output[1]

            return hook

        def stop(_module: Any, _inputs: Any, _output: Any) -> None:
            raise _Stop

        if capture:
            for layer in {layer for layer, _ in self.heads}:
                handles.append(layers[layer].self_attn.register_forward_hook(keep(layer)))
        handles.append(layers[deepest].register_forward_hook(stop))
        previous = model.config._attn_implementation
        if capture:
            model.set_attn_implementation("eager")
        try:
            model(input_ids=input_ids, **{self._cache_argument: cache}, use_cache=True)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
            if capture:
                model.set_attn_implementation(previous)
        if capture and any(weights.get(layer) is None for layer, _ in self.heads):
            raise RuntimeError(
                "the model returned no attention weights under eager attention; the re-ranker "
                "needs a model whose attention modules return (output, weights)"
            )
        return weights

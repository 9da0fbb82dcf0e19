"""``Index``: one object owning everything a search reads, keyed by global token position.

It holds the corpus (texts, ids, metadata, units, token table), the int8 key store and the SAE
postings of every indexed field, the stores' key clusters and BM25 over the units. It knows
nothing of the model: the facade scans and encodes, then hands the results to :meth:`commit`.
Saving and loading go through :mod:`s3_retriever.index.storage`, each store writing its own
arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.index.bm25 import BM25Index, LexicalConfig
from s3_retriever.index.clusters import read_clusters, save_clusters
from s3_retriever.index.corpus import Corpus
from s3_retriever.index.key_encoding import NewCodes, NewKeys
from s3_retriever.index.key_store import KeyStore
from s3_retriever.index.posting_merge import splice_pieces
from s3_retriever.index.postings import Field, Postings
from s3_retriever.index.segment import SegmentConfig, segment
from s3_retriever.index.staging import Staged
from s3_retriever.index.threads import run_in_threads
from s3_retriever.model.scan import TokenizedText


def _stem(kind: str, field: Field) -> str:
    layer, kv = field
    return f"{kind}/L{layer}_H{kv}"


class Index:
    """Documents with their stored keys, postings, key clusters and BM25.

    Args:
        key_fields: fields whose int8 keys are stored (the ``exact`` scorer reads them).
        head_dim: dimension of one key.
        postings_latents: field -> dictionary size of the SAE coding it, for stored postings.
        segment: how a committed document is cut into units.
        lexical: BM25 parameters.
    """

    def __init__(
        self,
        key_fields: Sequence[Field],
        head_dim: int,
        postings_latents: Mapping[Field, int],
        segment: SegmentConfig | None = None,
        lexical: LexicalConfig | None = None,
    ) -> None:
        self.segment_config = segment or SegmentConfig()
        self.corpus = Corpus()
        self.key_stores: dict[Field, KeyStore] = {f: KeyStore(head_dim) for f in key_fields}
        self.postings: dict[Field, Postings] = {f: Postings(n) for f, n in postings_latents.items()}
        self.bm25 = BM25Index(lexical)
        self.versions: dict[str, str] = {}
        """Index folder -> sha256 of the manifest this index was last read from or saved as
        there; a save refuses to replace a version it has not seen (another writer's)."""

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.corpus)

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus.doc_ids)

    @property
    def n_positions(self) -> int:
        return self.corpus.n_positions

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 score of every unit for ``query``. The BM25 index follows every commit and
        deletion; only a loaded index builds it, on its first query."""
        self.bm25.ensure(self._unit_texts)
        return self.bm25.scores(query)

    def _unit_texts(self, first_unit: int = 0) -> list[str]:
        corpus = self.corpus
        return [corpus.unit_text(u) for u in range(first_unit, corpus.n_units)]

    def nbytes(self) -> dict[str, int]:
        """Bytes held by each store: postings, keys and the token/unit tables."""
        corpus = self.corpus
        return {
            "postings": sum(p.nbytes for p in self.postings.values()),
            "keys": sum(s.nbytes for s in self.key_stores.values()),
            "tables": int(
                corpus.unit_tokens.nbytes + corpus.unit_chars.nbytes + corpus.unit_doc.nbytes
            ),
        }

    # ------------------------------------------------------------------ writing
    def commit(
        self,
        texts: Sequence[str],
        ids: Sequence[str],
        metadatas: Sequence[dict[str, Any]],
        tokenized: Sequence[TokenizedText],
        new_keys: NewKeys,
        new_codes: NewCodes,
    ) -> None:
        """Add scanned documents with their keys and codes, whose global positions follow the
        :attr:`n_positions` already indexed."""
        first_unit = self._append_documents(texts, ids, metadatas, tokenized)
        n_positions = self.corpus.n_positions

        def commit_keys(f: Field) -> None:
            store = self.key_stores[f]
            for positions, vectors in new_keys.get(f, []):
                store.append(positions, vectors)
            store.flush(n_positions)

        def commit_postings(f: Field) -> None:
            postings = self.postings[f]
            for positions, latent_ids, acts in new_codes.get(f, []):
                postings.append(positions, latent_ids, acts)
            postings.flush()

        tasks = [partial(commit_keys, f) for f in self.key_stores]
        tasks += [partial(commit_postings, f) for f in self.postings]
        run_in_threads(tasks)
        if self.bm25.ready:
            self.bm25.add(self._unit_texts(first_unit))

    def stage(self, n_positions: int, piece_tokens: int | None = None) -> Staged:
        """Empty stages, one per stored field, for a call of ``n_positions`` tokens
        (:mod:`s3_retriever.index.staging`); :meth:`commit_staged` commits them."""
        postings = {f: (p.n_latents, p.exact_activations) for f, p in self.postings.items()}
        head_dims = {s.head_dim for s in self.key_stores.values()}
        return Staged.for_call(
            n_positions, list(self.key_stores), max(head_dims, default=0), postings, piece_tokens
        )

    def commit_staged(
        self,
        texts: Sequence[str],
        ids: Sequence[str],
        metadatas: Sequence[dict[str, Any]],
        tokenized: Sequence[TokenizedText],
        staged: Staged,
    ) -> None:
        """Add scanned documents whose keys and codes were staged by :meth:`stage`, at
        positions counted from their first token: they follow the ones already indexed."""
        n_new = sum(len(t) for t in tokenized)
        if n_new != staged.n_positions:
            raise ValueError(f"{n_new} tokens to commit but {staged.n_positions} staged")
        staged.check()
        pieces = {f: stage.pieces() for f, stage in staged.postings.items()}
        base = self.corpus.n_positions
        first_unit = self._append_documents(texts, ids, metadatas, tokenized)

        def commit_keys(f: Field) -> None:
            self.key_stores[f].extend(staged.keys[f].codes, staged.keys[f].scales)

        def commit_postings(f: Field) -> None:
            splice_pieces(self.postings[f], pieces[f], base)

        tasks = [partial(commit_keys, f) for f in self.key_stores]
        tasks += [partial(commit_postings, f) for f in self.postings]
        run_in_threads(tasks)
        if self.bm25.ready:
            self.bm25.add(self._unit_texts(first_unit))

    def _append_documents(
        self,
        texts: Sequence[str],
        ids: Sequence[str],
        metadatas: Sequence[dict[str, Any]],
        tokenized: Sequence[TokenizedText],
    ) -> int:
        """Segment and append documents to the corpus; returns the first new unit."""
        first_unit = self.corpus.n_units
        for text, doc_id, meta, tokens in zip(texts, ids, metadatas, tokenized, strict=True):
            units = segment(text, tokens.starts, self.segment_config)
            self.corpus.append(doc_id, text, meta, tokens.ends, units)
        return first_unit

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents by id; returns how many were removed (unknown ids are ignored)."""
        rows_by_id = self.corpus.row_of()
        rows = {rows_by_id[i] for i in ids if i in rows_by_id}
        if not rows:
            return 0
        keep_units = ~np.isin(self.corpus.unit_doc, np.fromiter(rows, np.int64, len(rows)))
        keep = self.corpus.delete_rows(rows)
        for store in self.key_stores.values():
            store.keep(keep)
        for postings in self.postings.values():
            postings.keep(keep)
        self.bm25.keep(keep_units)
        return len(rows)

    # ------------------------------------------------------------------ files
    def write(self, folder: Path, keep_clusters_above: int | None) -> None:
        """Write every store's arrays into ``folder`` (see :mod:`s3_retriever.index.storage`).

        Clusters are derived from the keys, but building them takes seconds per million tokens:
        an index past ``keep_clusters_above`` positions keeps them, so its first query does not
        wait.
        """
        self.corpus.save(folder)
        n_positions = self.corpus.n_positions
        with_clusters = keep_clusters_above is not None and n_positions > keep_clusters_above
        for f, store in self.key_stores.items():
            store.save(folder / _stem("keys", f), n_positions)
            if with_clusters:
                save_clusters(store, folder / _stem("clusters", f))
        for f, postings in self.postings.items():
            postings.save(folder / _stem("postings", f))

    def read(
        self,
        folder: Path,
        documents: Corpus,
        arrays: Mapping[str, np.ndarray],
        format_version: int,
        n_documents: int,
        n_positions: int,
    ) -> None:
        """Replace the contents by what :meth:`write` put in ``folder``, read back as
        ``documents`` and ``arrays`` (by file name; the large ones memory-mapped).
        ``n_documents`` and ``n_positions`` are what the manifest says it holds."""
        documents.read_tables(arrays, folder, n_documents, n_positions)
        for f, store in self.key_stores.items():
            store.read(arrays, _stem("keys", f), n_positions, folder)
            read_clusters(store, arrays, _stem("clusters", f), n_positions, folder)
        for f, postings in self.postings.items():
            postings.read(arrays, _stem("postings", f), n_positions, format_version, folder)
        self.corpus = documents
        self.bm25.invalidate()

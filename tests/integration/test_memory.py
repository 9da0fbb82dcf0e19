"""A scan's peak memory is bounded by chunk and batch size, not by document length."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.integration.conftest import requires_model

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from tests.integration.conftest import real_text
    from s3_retriever.model.loading import load_model
    from s3_retriever.model.scan import ScanConfig, Scanner, tokenize
    n_tokens = int(sys.argv[1])
    loaded = load_model()
    scanner = Scanner(loaded.model, [5, 8], config=ScanConfig(show_progress=False),
                      bos_token_id=loaded.tokenizer.bos_token_id)
    text = real_text(n_tokens * 6)
    doc = tokenize(loaded.tokenizer, text)
    ids = doc.input_ids[:n_tokens]
    doc = type(doc)(ids, doc.starts[:n_tokens], doc.ends[:n_tokens])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen = 0
    for capture in scanner.scan([doc]):
        seen += capture.keys[8].shape[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tokens": seen, "peak_kib": peak, "before_kib": before}))
    """
)


def _peak(n_tokens: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n_tokens)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@requires_model
@pytest.mark.model
def test_scan_memory_flat_in_document_length() -> None:
    small = _peak(20_000)
    large = _peak(200_000)
    assert small["tokens"] == 20_000 and large["tokens"] == 200_000
    assert large["peak_kib"] <= 1.25 * small["peak_kib"], (small, large)

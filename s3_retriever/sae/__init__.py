"""Sparse autoencoders over attention keys: the bundle an index is built with (:mod:`.bundle`),
sparse coding by pursuit (:mod:`.pursuit`), training (:mod:`.training`, :mod:`.vectors`,
:mod:`.checkpoint`, :mod:`.vector_cache`) and fidelity reports (:mod:`.fidelity`)."""

from s3_retriever.sae.bundle import (
    COMPACT_VARIANT,
    KEY_CODINGS,
    SAEBundle,
    SAEConfig,
    TopKSAE,
    bundle_checksum,
    fraction_of_variance_unexplained,
    shipped_bundle_dir,
)

__all__ = [
    "COMPACT_VARIANT",
    "KEY_CODINGS",
    "SAEBundle",
    "SAEConfig",
    "TopKSAE",
    "bundle_checksum",
    "fraction_of_variance_unexplained",
    "shipped_bundle_dir",
]

"""Exceptions raised by s3-retriever. Each message says what went wrong and what to do.

Every error the package raises on purpose derives from :class:`S3RetrieverError`. Besides the
classes here: :class:`s3_retriever.files.untrusted.UntrustedFileError` and
:class:`s3_retriever.bulk.SourceError` (both also ``ValueError``, as before). Bad arguments
raise ``ValueError`` or ``TypeError``, as Python's own functions do.
"""

from __future__ import annotations


class S3RetrieverError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelError(S3RetrieverError):
    """The model cannot be found, verified, loaded or instrumented."""


class SAEError(S3RetrieverError):
    """SAE weights are missing, damaged or do not fit the model."""


class IndexLoadError(S3RetrieverError):
    """A saved index is damaged, from an unknown format version, or does not match its model."""


class CLIError(S3RetrieverError):
    """A user-facing problem on the command line: printed as one line on stderr, exit status 2."""

"""Exceptions raised by s3-retriever. Each message says what went wrong and what to do.

Every refusal is an :class:`S3RetrieverError`, so one ``except`` catches them all; those about
bad values (a damaged index, an unreadable input) are also :class:`ValueError`, so handlers
written for the standard exception keep working.
"""

from __future__ import annotations


class S3RetrieverError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelError(S3RetrieverError):
    """The model cannot be found, verified, loaded or instrumented."""


class SAEError(S3RetrieverError):
    """SAE weights are missing, damaged or do not fit the model."""


class IndexLoadError(S3RetrieverError, ValueError):
    """A saved index is damaged, from an unknown format version, or does not match its model."""


class CLIError(S3RetrieverError):
    """A user-facing problem on the command line: printed as one line on stderr, exit status 2."""


class SaveTargetError(S3RetrieverError, ValueError):
    """A save would replace something that is not an s3-retriever index (a file, a folder of
    other files), or an index that another writer changed since this retriever read it."""


class IndexBusyError(S3RetrieverError):
    """Another process holds the writer lock of an index folder."""

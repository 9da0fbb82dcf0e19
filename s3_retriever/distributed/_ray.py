"""The one place that imports Ray, with an error that says how to install it."""

from __future__ import annotations

from types import ModuleType


def require_ray() -> ModuleType:
    """The ``ray`` module, or an ImportError naming the extra that provides it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "sharded indexing and search need Ray: pip install 's3-retriever[ray]'"
        ) from exc
    return ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> ModuleType:
    """Connect to the Ray cluster at ``address`` (``None``: start or reuse a local one)."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs: dict[str, object] = {"address": address, "log_to_driver": False}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
    return ray

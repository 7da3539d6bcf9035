"""Storage backends behind one interface; `open_store` is the only place that knows which."""

from __future__ import annotations

from pathlib import Path

from .base import ObjectInfo, Store

__all__ = ["ObjectInfo", "Store", "open_store"]


def open_store(url: str) -> Store:
    """A store for `/local/dir`, `file:///dir`, `s3://bucket/prefix` or `gs://bucket/prefix`."""
    if url.startswith("s3://"):
        from .s3 import S3Store

        return S3Store(url)
    if url.startswith("gs://"):
        from .gcs import GCSStore

        return GCSStore(url)
    if url.startswith("file://"):
        url = url[len("file://"):]
    from .local import LocalStore

    return LocalStore(Path(url))

"""Object storage: a local folder or an S3-compatible bucket behind one small interface."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from care_companion.errors import ConfigError
from care_companion.storage.base import ObjectNotFound, ObjectStore
from care_companion.storage.local import LocalStore
from care_companion.storage.s3 import S3Store

if TYPE_CHECKING:
    from care_companion.config import Settings

__all__ = ["LocalStore", "ObjectNotFound", "ObjectStore", "S3Store", "open_store", "store_from_settings"]


def open_store(uri: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """Open ``s3://bucket/prefix`` as an :class:`S3Store`, a folder path or ``file://`` URI as a :class:`LocalStore`."""
    if not uri or not str(uri).strip():
        raise ConfigError("object store URI is empty")
    uri = str(uri).strip()
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"invalid object store URI {uri!r}: expected s3://bucket[/prefix]")
        return S3Store(parsed.netloc, prefix=unquote(parsed.path).strip("/"), endpoint_url=endpoint_url)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"invalid object store URI {uri!r}: file:// URIs must name a local path")
        return LocalStore(Path(unquote(parsed.path)))
    if len(scheme) > 1:  # one letter is a Windows drive, anything else an unsupported scheme
        raise ConfigError(f"unsupported object store URI {uri!r}: use a folder path, file:// or s3://")
    return LocalStore(Path(uri))


def store_from_settings(settings: Settings) -> ObjectStore:
    """The object store the settings name (default: ``<data_dir>/store``)."""
    return open_store(settings.store_uri, endpoint_url=settings.s3_endpoint_url)

"""The object store contract: flat, '/'-separated keys mapped to immutable byte objects.

Backends (a local folder, S3-compatible servers) must make writes atomic: a reader sees either the old
object, the new one, or nothing, never a partially written object.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from care_companion.errors import CareError, ConfigError, ServiceUnavailable


class ObjectNotFound(CareError):
    """A key is not present in the object store."""

    code = "not_found"

    def __init__(self, detail: str, *, key: str = "") -> None:
        super().__init__(detail)
        self.key = key


def check_key(key: str) -> str:
    """Validate an object key: a relative '/'-separated path without empty, '.' or '..' parts."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"invalid object key {key!r}: keys are non-empty strings")
    if key.startswith("/") or "\\" in key or (len(key) > 1 and key[1] == ":"):
        raise ConfigError(f"invalid object key {key!r}: keys are relative '/'-separated paths")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ConfigError(f"invalid object key {key!r}: empty, '.' or '..' path parts are not allowed")
    if "\x00" in key:
        raise ConfigError(f"invalid object key {key!r}: NUL characters are not allowed")
    return key


def check_prefix(prefix: str) -> str:
    """Validate a listing prefix: '' or a key prefix, optionally ending with '/'."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class ObjectStore(ABC):
    """Byte objects under relative keys; subclasses implement the primitive operations."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any existing object."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object under ``key``; raises :class:`ObjectNotFound` when it is missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys of all objects whose key starts with ``prefix``."""

    @abstractmethod
    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        """Every object whose key starts with ``prefix``, mapped to when it was last written (aware, UTC)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing key is not an error."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """A URI naming ``key`` in this store (the store root for ``''``), for messages and lineage."""

    def put_file(self, key: str, path: Path | str) -> None:
        """Store the contents of a local file under ``key`` atomically."""
        self.put_bytes(key, Path(path).read_bytes())

    def get_file(self, key: str, path: Path | str) -> Path:
        """Write the object under ``key`` to a local file (atomically) and return its path."""
        target = Path(path)
        write_atomic(target, self.get_bytes(key))
        return target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri('')!r})"


TMP_PREFIX = ".~tmp-"


def _atomic_target(target: Path, fill: Callable[[BinaryIO], object], *, durable: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to a local file through a temporary sibling and ``os.replace`` (fsync'd if durable)."""
    _atomic_target(target, lambda out: out.write(data), durable=durable)


def copy_atomic(source: Path, target: Path, *, durable: bool = False) -> None:
    """Copy a local file to ``target`` through a temporary sibling and ``os.replace`` (fsync'd if durable)."""

    def fill(out: BinaryIO) -> None:
        with source.open("rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)

    _atomic_target(target, fill, durable=durable)


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Turn any failure of the object store (local I/O, S3 client, connection) into a 503-style
    :class:`ServiceUnavailable` (code ``store_unavailable``); our own errors pass through."""
    try:
        yield
    except CareError:
        raise
    except Exception as exc:
        raise ServiceUnavailable(f"the object store failed while {what}: {exc}", code="store_unavailable") from exc

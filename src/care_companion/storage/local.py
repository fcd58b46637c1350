"""Object store in a local folder: one file per key, written atomically and durably."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from care_companion.storage.base import (
    TMP_PREFIX,
    ObjectNotFound,
    ObjectStore,
    check_key,
    check_prefix,
    copy_atomic,
    write_atomic,
)


class LocalStore(ObjectStore):
    """Objects as files under ``root``; writes go to a temporary sibling, are fsync'd, then ``os.replace``'d."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically."""
        write_atomic(self._path(key), bytes(data), durable=True)

    def get_bytes(self, key: str) -> bytes:
        """The object under ``key``; :class:`ObjectNotFound` when missing."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"object {key!r} not found in {self.uri('')}", key=key) from None

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self._path(key).is_file()

    def _walk(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix`` (temporary files of writes in progress left out), in walk order."""
        check_prefix(prefix)
        folder = prefix.rpartition("/")[0]
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else f"{rel}/"
            dirnames[:] = [d for d in dirnames if (base + d + "/").startswith(prefix) or prefix.startswith(base + d)]
            yield from (
                base + name
                for name in filenames
                if not name.startswith(TMP_PREFIX) and (base + name).startswith(prefix)
            )

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (a plain string prefix, as in S3)."""
        return sorted(self._walk(prefix))

    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        """Keys starting with ``prefix`` mapped to their files' modification times (UTC); a file deleted while
        listing is left out."""
        found: dict[str, datetime] = {}
        for key in self._walk(prefix):
            try:
                mtime = self._path(key).stat().st_mtime
            except FileNotFoundError:
                continue
            found[key] = datetime.fromtimestamp(mtime, UTC)
        return found

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; missing keys are ignored."""
        self._path(key).unlink(missing_ok=True)

    def put_file(self, key: str, path: Path | str) -> None:
        """Copy a local file into the store atomically, without reading it into memory."""
        copy_atomic(Path(path), self._path(key), durable=True)

    def get_file(self, key: str, path: Path | str) -> Path:
        """Copy the object under ``key`` to a local file atomically and return its path."""
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(f"object {key!r} not found in {self.uri('')}", key=key)
        target = Path(path)
        copy_atomic(source, target)
        return target

    def uri(self, key: str) -> str:
        """``file://`` URI of ``key`` (of the root for ``''``)."""
        return (self._path(key) if key else self.root).as_uri()

"""Object store behaviour: the shared contract every backend must pass, run here against LocalStore.

``ObjectStoreContract`` is the one copy of the behavioural suite; each backend's test module subclasses it
and provides a (parametrised) ``store`` fixture. tests/integration/test_storage_s3.py runs it on S3.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from care_companion.config import Settings
from care_companion.errors import CareError, ConfigError
from care_companion.storage import LocalStore, ObjectNotFound, ObjectStore, S3Store, open_store, store_from_settings

BAD_KEYS = ["", "/abs/key", "a/../b", "..", "../x", "a//b", "a/./b", "a/", "a\\b"]


class ObjectStoreContract:
    """Behaviour shared by all object store backends; subclasses define a ``store`` fixture."""

    def test_put_get_roundtrip(self, store: ObjectStore) -> None:
        store.put_bytes("a/b/c.bin", b"\x00\x01payload")
        assert store.get_bytes("a/b/c.bin") == b"\x00\x01payload"
        assert store.exists("a/b/c.bin")

    def test_overwrite_replaces(self, store: ObjectStore) -> None:
        store.put_bytes("k.txt", b"old")
        store.put_bytes("k.txt", b"new value")
        assert store.get_bytes("k.txt") == b"new value"
        assert store.list() == ["k.txt"]

    def test_empty_object(self, store: ObjectStore) -> None:
        store.put_bytes("empty", b"")
        assert store.exists("empty")
        assert store.get_bytes("empty") == b""

    def test_missing_key(self, store: ObjectStore) -> None:
        assert not store.exists("nope/x.png")
        with pytest.raises(ObjectNotFound) as info:
            store.get_bytes("nope/x.png")
        assert info.value.code == "not_found"
        assert isinstance(info.value, CareError)

    def test_list_sorted_with_prefixes(self, store: ObjectStore) -> None:
        for key in ["b/2", "a/1", "b/1", "ab/3", "c", "b/sub/4"]:
            store.put_bytes(key, key.encode())
        assert store.list() == ["a/1", "ab/3", "b/1", "b/2", "b/sub/4", "c"]
        assert store.list("b/") == ["b/1", "b/2", "b/sub/4"]
        assert store.list("a") == ["a/1", "ab/3"]
        assert store.list("b/s") == ["b/sub/4"]
        assert store.list("zzz/") == []

    def test_list_empty_store(self, store: ObjectStore) -> None:
        assert store.list() == []

    def test_list_modified_gives_aware_write_times(self, store: ObjectStore) -> None:
        before = datetime.now(UTC) - timedelta(seconds=2)  # S3 keeps whole seconds; clocks may be coarse
        for key in ["m/1", "m/sub/2", "mx", "other"]:
            store.put_bytes(key, b"x")
        after = datetime.now(UTC) + timedelta(seconds=2)
        found = store.list_modified("m")
        assert sorted(found) == store.list("m") == ["m/1", "m/sub/2", "mx"]
        assert all(moment.tzinfo is not None and before <= moment <= after for moment in found.values())
        assert sorted(store.list_modified()) == store.list()
        assert store.list_modified("zzz/") == {}

    def test_delete(self, store: ObjectStore) -> None:
        store.put_bytes("d/x", b"1")
        store.put_bytes("d/y", b"2")
        store.delete("d/x")
        assert not store.exists("d/x")
        assert store.list("d/") == ["d/y"]
        store.delete("d/x")  # deleting a missing key is not an error

    def test_files_roundtrip(self, store: ObjectStore, tmp_path: Path) -> None:
        source = tmp_path / "in.bin"
        source.write_bytes(b"file content" * 1000)
        store.put_file("files/in.bin", source)
        target = tmp_path / "out" / "nested" / "copy.bin"
        store.get_file("files/in.bin", target)
        assert target.read_bytes() == source.read_bytes()
        assert sorted(p.name for p in target.parent.iterdir()) == ["copy.bin"]

    def test_get_file_missing(self, store: ObjectStore, tmp_path: Path) -> None:
        target = tmp_path / "out.bin"
        with pytest.raises(ObjectNotFound):
            store.get_file("missing.bin", target)
        assert not target.exists()
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_rejects_bad_keys(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(ConfigError):
            store.put_bytes(key, b"x")
        with pytest.raises(ConfigError):
            store.get_bytes(key)
        with pytest.raises(ConfigError):
            store.exists(key)

    def test_rejects_bad_prefix(self, store: ObjectStore) -> None:
        with pytest.raises(ConfigError):
            store.list("../")
        with pytest.raises(ConfigError):
            store.list("/etc")

    def test_uri(self, store: ObjectStore) -> None:
        root = store.uri("")
        assert store.uri("x/y.png").startswith(root.rstrip("/"))
        assert store.uri("x/y.png").endswith("x/y.png")

    def test_concurrent_readers_never_see_partial_objects(self, store: ObjectStore) -> None:
        big_a, big_b = b"a" * 300_000, b"b" * 300_000
        store.put_bytes("race", big_a)
        seen: list[bytes] = []
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                seen.append(store.get_bytes("race"))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for i in range(6):
                store.put_bytes("race", big_b if i % 2 == 0 else big_a)
        finally:
            done.set()
            thread.join()
        assert seen and all(value in (big_a, big_b) for value in seen)
        assert store.list() == ["race"]


class TestLocalStore(ObjectStoreContract):
    """The contract on a local folder, opened directly, by path and by file:// URI."""

    @pytest.fixture(params=["direct", "path", "file-uri"])
    def store(self, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
        root = tmp_path / "store root"
        if request.param == "direct":
            return LocalStore(root)
        return open_store(str(root) if request.param == "path" else root.as_uri())


def test_local_store_layout_and_no_temp_leftovers(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("x/y.bin", b"data")
    assert (tmp_path / "s" / "x" / "y.bin").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "s" / "x").iterdir()] == ["y.bin"]
    assert store.uri("x/y.bin") == (tmp_path / "s" / "x" / "y.bin").as_uri()


def test_local_store_ignores_stray_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("k", b"1")
    (tmp_path / ".~tmp-k.abc123").write_bytes(b"partial")  # left by a crashed writer
    assert store.list() == ["k"]
    assert list(store.list_modified()) == ["k"]


def test_local_store_list_modified_is_the_file_mtime(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("old/k.png", b"1")
    moment = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    os.utime(tmp_path / "old" / "k.png", (moment.timestamp(), moment.timestamp()))
    assert store.list_modified("old/") == {"old/k.png": moment}
    assert store.list_modified("old/")["old/k.png"].utcoffset() == timedelta(0)


def test_open_store_dispatch(tmp_path: Path) -> None:
    s3 = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("bucket", "some/prefix/", "http://127.0.0.1:9")
    assert s3.uri("k") == "s3://bucket/some/prefix/k"
    assert isinstance(open_store("s3://bucket"), S3Store)
    local = open_store(str(tmp_path))
    assert isinstance(local, LocalStore) and local.root == tmp_path.resolve()
    assert open_store(tmp_path.as_uri()).root == tmp_path.resolve()  # type: ignore[attr-defined]


@pytest.mark.parametrize("uri", ["", "s3://", "s3:///prefix", "gs://bucket/x", "http://host/x"])
def test_open_store_rejects_bad_uris(uri: str) -> None:
    with pytest.raises(ConfigError):
        open_store(uri)


def test_store_from_settings(settings: Settings) -> None:
    store = store_from_settings(settings)
    assert isinstance(store, LocalStore)
    assert store.root == (settings.data_dir / "store").resolve()
    other = store_from_settings(settings.model_copy(update={"object_store": "s3://b/p", "s3_endpoint_url": "http://x"}))
    assert isinstance(other, S3Store) and other.endpoint_url == "http://x" and other.prefix == "p/"

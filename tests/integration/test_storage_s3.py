"""The object store contract against a real S3-compatible HTTP server (moto's standalone server on 127.0.0.1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from care_companion.errors import ConfigError
from care_companion.storage import S3Store, open_store
from tests.unit.test_storage_local import ObjectStoreContract

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free local port, with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "HTTPS_PROXY"):
            mp.delenv(name, raising=False)
            mp.delenv(name.lower(), raising=False)
        for name, value in FAKE_ENV.items():
            mp.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def s3_client(s3_endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client: Any) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


class TestS3Store(ObjectStoreContract):
    """The shared contract on S3: at the bucket root and under a key prefix, opened via ``open_store``."""

    @pytest.fixture(params=["", "team/care"])
    def store(self, request: pytest.FixtureRequest, s3_endpoint: str, bucket: str) -> S3Store:
        uri = f"s3://{bucket}/{request.param}" if request.param else f"s3://{bucket}"
        store = open_store(uri, endpoint_url=s3_endpoint)
        assert isinstance(store, S3Store)
        return store


def test_prefix_isolates_objects(s3_endpoint: str, bucket: str, s3_client: Any) -> None:
    outer = S3Store(bucket, endpoint_url=s3_endpoint)
    inner = S3Store(bucket, prefix="/p/q/", endpoint_url=s3_endpoint)
    inner.put_bytes("k", b"v")
    outer.put_bytes("other", b"w")
    assert inner.list() == ["k"]
    assert outer.list() == ["other", "p/q/k"]
    assert s3_client.get_object(Bucket=bucket, Key="p/q/k")["Body"].read() == b"v"
    assert inner.uri("k") == f"s3://{bucket}/p/q/k"


def test_list_follows_pagination(s3_endpoint: str, bucket: str) -> None:
    store = S3Store(bucket, endpoint_url=s3_endpoint)
    store.page_size = 2
    keys = [f"img/{i:03d}.png" for i in range(7)]
    for key in reversed(keys):
        store.put_bytes(key, b"x")
    assert store.list("img/") == keys


def test_list_modified_follows_pagination_under_a_prefix(s3_endpoint: str, bucket: str, s3_client: Any) -> None:
    store = S3Store(bucket, prefix="team", endpoint_url=s3_endpoint)
    store.page_size = 2
    keys = [f"img/{i:03d}.png" for i in range(5)]
    for key in keys:
        store.put_bytes(key, b"x")
    found = store.list_modified("img/")
    assert sorted(found) == keys
    head = s3_client.head_object(Bucket=bucket, Key="team/img/000.png")
    assert found["img/000.png"] == head["LastModified"] and found["img/000.png"].tzinfo is not None


def test_injected_client_is_used(s3_client: Any, bucket: str) -> None:
    store = S3Store(bucket, client=s3_client)
    store.put_bytes("a", b"1")
    assert store.client is s3_client
    assert store.get_bytes("a") == b"1"


def test_missing_bucket_is_a_config_error(s3_endpoint: str, tmp_path: Any) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=s3_endpoint)
    with pytest.raises(ConfigError, match="does not exist"):
        store.put_bytes("k", b"v")
    with pytest.raises(ConfigError, match="does not exist"):
        store.list()
    source = tmp_path / "f"
    source.write_bytes(b"x")
    with pytest.raises(ConfigError, match="does not exist"):
        store.put_file("k", source)


def test_construction_is_lazy() -> None:
    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9")  # nothing listens there; nothing is contacted
    assert store._client is None

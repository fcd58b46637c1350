"""Object store on S3 or an S3-compatible server (MinIO, Ceph, Swift S3, moto); boto3 is imported lazily."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from care_companion.errors import ConfigError
from care_companion.storage.base import ObjectNotFound, ObjectStore, check_key, check_prefix

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix``; single PUTs and multipart uploads are atomic in S3."""

    page_size = 1000

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: Any = None) -> None:
        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self._client = client

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"} if self.endpoint_url else {},
            )
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, method: str, key: str | None = None, **kwargs: Any) -> Any:
        """Call a client method, turning missing buckets and credential or endpoint problems into CareErrors."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise ConfigError(f"S3 bucket {self.bucket!r} does not exist ({self._where()})") from exc
            if key is not None and code in _MISSING_CODES:
                raise ObjectNotFound(f"object {key!r} not found in {self.uri('')}", key=key) from exc
            if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}:
                raise ConfigError(f"S3 access denied for {self.uri(key or '')} ({code}); check credentials") from exc
            raise
        except S3UploadFailedError as exc:
            if "NoSuchBucket" in str(exc):
                raise ConfigError(f"S3 bucket {self.bucket!r} does not exist ({self._where()})") from exc
            raise
        except NoCredentialsError as exc:
            raise ConfigError(f"no S3 credentials found for {self.uri('')}; set AWS_ACCESS_KEY_ID etc.") from exc
        except BotoCoreError as exc:
            raise ConfigError(f"S3 request to {self._where()} failed: {exc}") from exc

    def _where(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint_url or 'AWS'}"

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` with one PUT (atomic)."""
        self._call("put_object", Bucket=self.bucket, Key=self._key(key), Body=bytes(data))

    def get_bytes(self, key: str) -> bytes:
        """The object under ``key``; :class:`ObjectNotFound` when missing."""
        response = self._call("get_object", key, Bucket=self.bucket, Key=self._key(key))
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (a HEAD request)."""
        try:
            self._call("head_object", key, Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return False
        return True

    def _items(self, prefix: str) -> Iterator[dict[str, Any]]:
        """The listing entries (``Key``, ``LastModified``, ...) under ``prefix``, following every result page."""
        check_prefix(prefix)
        from botocore.exceptions import ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig={"PageSize": self.page_size}
        )
        try:
            for page in pages:
                yield from page.get("Contents", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise ConfigError(f"S3 bucket {self.bucket!r} does not exist ({self._where()})") from exc
            raise

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix``, following every result page."""
        return sorted(item["Key"][len(self.prefix) :] for item in self._items(prefix))

    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        """Keys starting with ``prefix`` mapped to their ``LastModified`` times (UTC)."""
        return {item["Key"][len(self.prefix) :]: _utc(item["LastModified"]) for item in self._items(prefix)}

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; missing keys are ignored."""
        self._call("delete_object", Bucket=self.bucket, Key=self._key(key))

    def put_file(self, key: str, path: Path | str) -> None:
        """Upload a local file (multipart for large files; the object appears only when complete)."""
        self._call("upload_file", Filename=str(path), Bucket=self.bucket, Key=self._key(key))

    def get_file(self, key: str, path: Path | str) -> Path:
        """Download the object under ``key`` to a local file atomically and return its path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".~tmp-{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            self._call("download_file", key, Bucket=self.bucket, Key=self._key(key), Filename=tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def uri(self, key: str) -> str:
        """``s3://bucket/prefix/key`` (the store root for ``''``)."""
        return f"s3://{self.bucket}/{self.prefix}{check_key(key) if key else ''}"


def _utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (botocore parses LastModified aware; a naive one is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

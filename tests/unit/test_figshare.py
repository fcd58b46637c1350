"""The Figshare client, through a fake HTTP transport: listing, verified downloads, unpacking, resume, tokens."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import httpx
import pytest

from care_companion.config import Settings
from care_companion.data.figshare import FIGSHARE_API, fetch_article
from care_companion.errors import ConfigError, DataError

ARTICLE = 4242


def _zip_with(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


class FakeFigshare:
    """Answers the Figshare API's file list and downloads, and records what was asked."""

    def __init__(self, files: dict[str, bytes], *, bad_md5: bool = False, status: int = 200) -> None:
        self.files, self.bad_md5, self.status = files, bad_md5, status
        self.requests: list[httpx.Request] = []

    def listing(self) -> list[dict]:
        return [
            {
                "id": i,
                "name": name,
                "size": len(data),
                "download_url": f"https://ndownloader.figshare.com/files/{i}",
                "computed_md5": "0" * 32 if self.bad_md5 else hashlib.md5(data).hexdigest(),
            }
            for i, (name, data) in enumerate(self.files.items())
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status != 200:
            return httpx.Response(self.status, json={"message": "Invalid token"})
        if request.url.host == "api.figshare.com":
            return httpx.Response(200, json=self.listing())
        index = int(request.url.path.rsplit("/", 1)[-1])
        return httpx.Response(200, content=list(self.files.values())[index])

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def test_needs_a_token(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"figshare\.com/account/applications.*or do it by hand"):
        fetch_article(tmp_path / "dl", ARTICLE, manual="do it by hand", settings=Settings(figshare_token=None))
    assert not (tmp_path / "dl").exists()


@pytest.mark.parametrize("variable", ["FIGSHARE_TOKEN", "CARE_FIGSHARE_TOKEN"])
def test_reads_the_token_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str):
    for name in ("CARE_FIGSHARE_TOKEN", "FIGSHARE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "env-token")
    fake = FakeFigshare({})
    fetch_article(tmp_path / "dl", ARTICLE, client=fake.client(), settings=Settings())
    assert fake.requests[0].headers["Authorization"] == "token env-token"


def test_lists_downloads_verifies_and_unpacks(tmp_path: Path):
    table = b"filestem,patient_id\n"
    fake = FakeFigshare({"dataset.csv": table, "images_part1.zip": _zip_with("a.png", b"png bytes")})
    target = tmp_path / "dl"
    assert fetch_article(target, ARTICLE, client=fake.client(), settings=Settings(figshare_token="secret")) == target
    listing = fake.requests[0]
    assert str(listing.url).startswith(f"{FIGSHARE_API}/articles/{ARTICLE}/files")
    assert listing.url.params["page"] == "1" and listing.url.params["page_size"] == "100"
    assert all(r.headers["Authorization"] == "token secret" for r in fake.requests)
    assert (target / "dataset.csv").read_bytes() == table
    assert (target / "images_part1" / "a.png").read_bytes() == b"png bytes"
    assert sorted(p.name for p in target.iterdir()) == ["dataset.csv", "images_part1"]  # no zip, no .part left
    # a second fetch finds everything done and downloads nothing; a token given beats the settings
    again = FakeFigshare(fake.files)
    fetch_article(target, ARTICLE, "other-token", client=again.client(), settings=Settings(figshare_token="secret"))
    assert [r.url.host for r in again.requests] == ["api.figshare.com"]
    assert again.requests[0].headers["Authorization"] == "token other-token"


def test_rejects_a_bad_checksum_or_token(tmp_path: Path):
    bad = FakeFigshare({"dataset.csv": b"x,y\n"}, bad_md5=True)
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_article(tmp_path / "dl", ARTICLE, "t", client=bad.client())
    assert list((tmp_path / "dl").iterdir()) == []
    refused = FakeFigshare({}, status=403)
    with pytest.raises(ConfigError, match="refused the token"):
        fetch_article(tmp_path / "dl", ARTICLE, "t", client=refused.client())


def test_rejects_a_zip_member_outside_the_folder(tmp_path: Path):
    fake = FakeFigshare({"evil.zip": _zip_with("../escape.txt", b"x")})
    with pytest.raises(DataError, match="outside"):
        fetch_article(tmp_path / "dl", ARTICLE, "t", client=fake.client())
    assert not (tmp_path / "escape.txt").exists()

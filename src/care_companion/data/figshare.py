"""A small Figshare API client: list an article's files, download them verified, unpack zip archives.

Downloads are atomic (a ``.part`` file renamed when complete and checked against Figshare's MD5) and an
interrupted fetch resumes where it stopped. The token comes from the caller or ``Settings.figshare_token``
(``CARE_FIGSHARE_TOKEN`` or ``FIGSHARE_TOKEN``).
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import httpx
from pydantic import BaseModel

from care_companion.config import Settings, get_settings
from care_companion.errors import ConfigError, DataError
from care_companion.progress import progress_bar

FIGSHARE_API = "https://api.figshare.com/v2"
_CHUNK = 1 << 20


class FigshareFile(BaseModel):
    """A file of a Figshare article, as the API lists it."""

    id: int
    name: str
    size: int = 0
    download_url: str
    computed_md5: str = ""
    supplied_md5: str = ""

    @property
    def md5(self) -> str:
        """The checksum to verify the download against ("" when Figshare gives none)."""
        return self.computed_md5 or self.supplied_md5


def figshare_token(token: str | None, settings: Settings, *, manual: str) -> str:
    """The Figshare API token: the given one, else ``settings.figshare_token``.

    Args:
        token: a token given explicitly (e.g. ``--token``).
        settings: where ``CARE_FIGSHARE_TOKEN`` / ``FIGSHARE_TOKEN`` were read.
        manual: what to do instead without a token, appended to the error.

    Raises:
        ConfigError: when there is none, saying where to get one.
    """
    secret = settings.figshare_token
    token = token or (secret.get_secret_value() if secret is not None else None)
    if not token:
        raise ConfigError(
            "no Figshare token: create a personal token at https://figshare.com/account/applications "
            f"(log in, 'Create Personal Token') and pass it with --token or set FIGSHARE_TOKEN; or {manual}"
        )
    return token


def figshare_headers(token: str) -> dict[str, str]:
    """HTTP headers of an authenticated Figshare API request."""
    return {"Authorization": f"token {token}", "Accept": "application/json"}


def figshare_files(client: httpx.Client, token: str, article_id: int) -> list[FigshareFile]:
    """All files of a Figshare article (every page of ``GET /articles/{id}/files``)."""
    files: list[FigshareFile] = []
    page, size = 1, 100
    while True:
        response = client.get(
            f"{FIGSHARE_API}/articles/{article_id}/files",
            params={"page": page, "page_size": size},
            headers=figshare_headers(token),
        )
        _raise_for_status(response, f"listing the files of Figshare article {article_id}")
        batch = [FigshareFile.model_validate(item) for item in response.json()]
        files += batch
        if len(batch) < size:
            return files
        page += 1


def _raise_for_status(response: httpx.Response, doing: str) -> None:
    """A clear error for a failed HTTP response."""
    if response.status_code in (401, 403):
        raise ConfigError(f"Figshare refused the token while {doing} (HTTP {response.status_code}); check it")
    if response.is_error:
        raise DataError(f"{doing} failed: HTTP {response.status_code} from {response.url}")


def download_file(client: httpx.Client, file: FigshareFile, target: Path, token: str) -> Path:
    """Download one file into ``target`` atomically (a ``.part`` file renamed when complete and verified).

    A file already there with the expected size is kept. Raises :class:`DataError` on a checksum mismatch.
    """
    path = target / file.name
    if path.is_file() and (not file.size or path.stat().st_size == file.size):
        return path
    part = target / f".{file.name}.part"
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with (
            client.stream("GET", file.download_url, headers={"Authorization": f"token {token}"}) as response,
            progress_bar() as bar,
        ):
            _raise_for_status(response, f"downloading {file.name}")
            task = bar.add_task(f"{file.name} (MiB)", total=max(file.size, 1) / _CHUNK)
            with part.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk) / _CHUNK)
        if file.md5 and digest.hexdigest() != file.md5:
            raise DataError(f"{file.name}: checksum mismatch (md5 {digest.hexdigest()}, Figshare says {file.md5})")
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
    return path


def extract_zip(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` into ``target/<archive stem>`` atomically (a temporary folder renamed at the end).

    Raises:
        DataError: a corrupt archive or a member that would land outside the folder.
    """
    final = target / archive.stem
    temp = target / f".{archive.stem}.partial"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf, progress_bar() as bar:
            for member in bar.track(zf.infolist(), description=f"unpacking {archive.name}"):
                where = (temp / member.filename).resolve()
                if not where.is_relative_to(temp.resolve()):
                    raise DataError(f"{archive}: member {member.filename!r} would be written outside {final}")
                zf.extract(member, temp)
        temp.replace(final)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: not a valid zip archive ({exc})") from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final


def fetch_article(
    target: Path,
    article_id: int,
    token: str | None = None,
    *,
    manual: str = "download the files yourself",
    client: httpx.Client | None = None,
    settings: Settings | None = None,
) -> Path:
    """Download every file of Figshare article ``article_id`` into ``target`` and unpack its zip archives there.

    Each file is downloaded atomically and checked against Figshare's MD5; each ``.zip`` is unpacked into a
    folder of its name and then deleted. Files and folders already complete are skipped, so an interrupted
    fetch resumes where it stopped.

    Args:
        target: the folder to fill.
        article_id: the Figshare article.
        token: Figshare personal token (default: ``settings.figshare_token``).
        manual: what the user can do instead without a token (ends the missing-token error).
        client: the HTTP client (default: a new one following redirects).
        settings: where the token is read (default: :func:`~care_companion.config.get_settings`).
    """
    token = figshare_token(token, settings or get_settings(), manual=manual)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    owned = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, read=600.0))
    try:
        for file in figshare_files(http, token, article_id):
            if file.name.endswith(".zip") and (target / Path(file.name).stem).is_dir():
                continue
            path = download_file(http, file, target, token)
            if path.suffix == ".zip":
                extract_zip(path, target)
                path.unlink()
    finally:
        if owned:
            http.close()
    return target

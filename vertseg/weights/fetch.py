"""Bring a checkpoint from a path or URL into a folder, its sha256 checked by pooch before it is kept.

Local paths and `file://` URLs go through the same pooch verification as `http(s)://` downloads (a small
copying downloader stands in for pooch's HTTP one), so the checksum path users rely on is the tested one.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import pooch

REMOTE_SCHEMES = ("http", "https", "ftp", "sftp", "doi")


class FetchError(ValueError):
    """A source that cannot be fetched or whose checksum does not match; the message names it."""


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_url(source: str) -> bool:
    return urlparse(source).scheme in REMOTE_SCHEMES + ("file",)


def _file_url_path(url: str) -> Path:
    parsed = urlparse(url)
    return Path(url2pathname(unquote(parsed.path)))


def _copy_file_url(url: str, output_file: str, _pooch: object) -> None:
    """pooch downloader for `file://` URLs (pooch itself knows only network protocols)."""
    shutil.copyfile(_file_url_path(url), output_file)


def fetch(source: str, sha256: str | None, folder: Path, fname: str) -> Path:
    """`folder/fname` holding `source` (a path or URL); refused when its sha256 differs from `sha256`.

    A remote URL needs `sha256` (an unverified download is never kept); a local file without one is hashed as is.
    """
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise FetchError(f"--sha256 {sha256!r} is not a 64-digit hexadecimal SHA-256")
    remote = is_url(source) and urlparse(source).scheme != "file"
    if remote and sha256 is None:
        raise FetchError(f"{source}: a download needs --sha256 (the checksum its publisher gives) to be verified")
    url = source if is_url(source) else Path(source).expanduser().resolve().as_uri()
    if urlparse(url).scheme == "file" and not _file_url_path(url).is_file():
        raise FetchError(f"{source} does not exist or is not a file")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / fname).unlink(missing_ok=True)  # pooch would trust a file already there
    try:
        path = pooch.retrieve(
            url, known_hash=f"sha256:{sha256.lower()}" if sha256 else None, fname=fname, path=folder,
            downloader=_copy_file_url if urlparse(url).scheme == "file" else None,
        )
    except ValueError as error:  # pooch: a hash mismatch or an unknown protocol
        raise FetchError(f"{source}: {str(error).splitlines()[0]}") from None
    except OSError as error:
        raise FetchError(f"{source} cannot be fetched: {error}") from None
    return Path(path)

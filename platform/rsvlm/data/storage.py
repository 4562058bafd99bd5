"""One interface for local paths, ``file://`` and ``s3://`` URIs.

Everything that reads or writes datasets, images or checkpoints goes through :class:`Storage`, so the same
job runs on a laptop folder and on S3 / MinIO. The S3 endpoint is configuration (``storage.endpoint_url``,
else ``AWS_ENDPOINT_URL``); credentials come only from the standard AWS chain (environment variables,
shared credentials file, profile, instance role) of the process that uses the storage. They are resolved
lazily in each process and never stored in the object's state, its repr, errors or logs — which is also why a
Storage pickled to a Ray worker carries only the endpoint and region.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs

from rsvlm.config.schema import StorageConfig

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"


def is_remote(uri: str) -> bool:
    """True for object-store URIs (``s3://``)."""
    return str(uri).startswith(S3_SCHEME)


def local_path(uri: str) -> Path:
    """The filesystem path of a local path or ``file://`` URI."""
    uri = str(uri)
    return Path(urlparse(uri).path) if uri.startswith(FILE_SCHEME) else Path(uri)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for local paths and URIs alike (URIs keep their scheme)."""
    if is_remote(base):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return str(local_path(base).joinpath(*parts))


def resolve_inside(root: str, relative: str) -> str:
    """``root/relative``, refusing a ``relative`` that could leave ``root``.

    Raises ValueError for an empty path, an absolute path or URI, and any ``..`` component. (Symlinks are a
    property of a local filesystem, not of the string; ``prepare_data`` checks those separately.)
    """
    if not isinstance(relative, str) or not relative.strip():
        raise ValueError("empty image path")
    if relative.startswith(("/", "\\")) or "://" in relative or (len(relative) > 1 and relative[1] == ":"):
        raise ValueError(f"absolute image path '{relative}'")
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if ".." in parts:
        raise ValueError(f"image path '{relative}' leaves its root")
    return join(root, *[part for part in parts if part != "."])


class Storage:
    """Reads and writes files by URI. Picklable; S3 clients are created on first use in each process."""

    def __init__(self, options: Optional[StorageConfig] = None):
        self.options = options or StorageConfig()
        self._s3: Optional[pafs.S3FileSystem] = None
        self._client = None  # boto3 S3 client, for single-GET reads

    def __repr__(self) -> str:
        return f"Storage(endpoint_url={self.endpoint_url!r}, region={self.options.region!r})"

    def __getstate__(self) -> dict:
        # The live S3 clients hold credentials; the receiving process resolves its own.
        return {"options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.options, self._s3, self._client = state["options"], None, None

    @property
    def endpoint_url(self) -> Optional[str]:
        return self.options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None

    is_remote = staticmethod(is_remote)
    join = staticmethod(join)

    # -- filesystems -------------------------------------------------------------------------------------

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """``(pyarrow filesystem, path in it)`` for ``uri``: what Ray Data and Ray Train take."""
        if is_remote(uri):
            return self._s3_filesystem(), str(uri)[len(S3_SCHEME):]
        return pafs.LocalFileSystem(), str(local_path(uri).absolute())

    def _s3_filesystem(self) -> pafs.S3FileSystem:
        if self._s3 is None:
            self._s3 = _s3_filesystem(self.endpoint_url, self.options.region)
        return self._s3

    def _s3_client(self):
        if self._client is None:
            self._client = _s3_client(self.endpoint_url, self.options.region)
        return self._client

    # -- reading -----------------------------------------------------------------------------------------

    def read_bytes(self, uri: str) -> bytes:
        """The whole object; FileNotFoundError names the URI when it is missing."""
        if not is_remote(uri):
            return local_path(uri).read_bytes()
        # One GET through boto3: pyarrow's S3 input streams send a HEAD first, which doubles the requests per
        # image and the endpoint's CPU (bench/ingest.py measures it).
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = str(uri)[len(S3_SCHEME):].partition("/")
        try:
            return self._s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"no such object: {uri}") from None
            raise OSError(f"reading {uri} failed: {code or exc}") from None
        except BotoCoreError as exc:
            raise OSError(f"reading {uri} failed: {type(exc).__name__}: {exc}") from None

    def read_text(self, uri: str) -> str:
        """The object decoded as UTF-8; a UnicodeDecodeError is reported with the URI."""
        data = self.read_bytes(uri)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{uri}: not UTF-8 text (byte {exc.start})") from None

    def info(self, uri: str) -> pafs.FileInfo:
        fs, path = self.filesystem(uri)
        return fs.get_file_info(path)

    def exists(self, uri: str) -> bool:
        """A file or a folder (prefix) is there."""
        if not is_remote(uri):
            return local_path(uri).exists()
        return self.info(uri).type != pafs.FileType.NotFound

    def is_file(self, uri: str) -> bool:
        if not is_remote(uri):
            return local_path(uri).is_file()
        return self.info(uri).type == pafs.FileType.File

    def size(self, uri: str) -> int:
        info = self.info(uri)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"no such file: {uri}")
        return int(info.size)

    def list_files(self, uri: str) -> list[str]:
        """Every file under the folder ``uri``, as sorted paths relative to it (empty if there is none)."""
        fs, root = self.filesystem(uri)
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            return []
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        prefix = root.rstrip("/") + "/"
        return sorted(i.path[len(prefix):] for i in infos if i.type == pafs.FileType.File)

    # -- writing -----------------------------------------------------------------------------------------

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old content or the new, never a part."""
        if not is_remote(uri):
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
            partial.write_bytes(data)
            os.replace(partial, path)
            return
        fs, path = self.filesystem(uri)  # an S3 PUT is atomic by itself
        with fs.open_output_stream(path) as stream:
            stream.write(data)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def delete(self, uri: str) -> None:
        """Remove a file if it is there."""
        if self.is_file(uri):
            fs, path = self.filesystem(uri)
            fs.delete_file(path)

    def publish_folder(self, folder: Path, dest: str, *, last: str) -> None:
        """Copy the local ``folder`` to ``dest`` so that ``dest/last`` exists only once everything else does.

        Locally the folder is copied beside ``dest`` and renamed into place, replacing an older version in one
        step. On S3 the old ``last`` is removed first, the other files are uploaded, stale files of an older
        version are deleted, and ``last`` is uploaded at the end: a reader that finds it finds a complete set.
        """
        folder = Path(folder)
        if not (folder / last).is_file():
            raise FileNotFoundError(f"{folder}: nothing to publish without {last}")
        if not is_remote(dest):
            _publish_local(folder, local_path(dest))
            return
        self.delete(join(dest, last))
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        for name in names:
            if name != last:
                self.write_bytes(join(dest, name), (folder / name).read_bytes())
        for stale in set(self.list_files(dest)) - set(names):
            self.delete(join(dest, stale))
        self.write_bytes(join(dest, last), (folder / last).read_bytes())


def _publish_local(folder: Path, dest: Path) -> None:
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    shutil.copytree(folder, staged)
    retired = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
    if dest.exists():
        os.replace(dest, retired)
    os.replace(staged, dest)
    shutil.rmtree(retired, ignore_errors=True)


def _s3_filesystem(endpoint_url: Optional[str], region: Optional[str]) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with credentials from the standard AWS chain (resolved by boto3)."""
    import boto3

    session = boto3.Session()
    credentials = session.get_credentials()
    kwargs: dict = {"region": region or session.region_name or "us-east-1"}
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    else:
        kwargs["anonymous"] = True
    if endpoint_url:
        parsed = urlparse(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
        # MinIO and moto serve every bucket at the endpoint's own address.
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def _s3_client(endpoint_url: Optional[str], region: Optional[str]):
    """A boto3 S3 client (standard credential chain) with bounded retries, so a dead endpoint fails fast."""
    import boto3
    from botocore.config import Config

    session = boto3.Session()
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                    max_pool_connections=32)
    return session.client("s3", endpoint_url=endpoint_url, region_name=region or session.region_name or "us-east-1",
                          config=config)

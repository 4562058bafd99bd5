"""One interface for local paths, ``file://`` and ``s3://`` URIs.

Everything that reads or writes datasets, images or checkpoints goes through :class:`Storage`, so the same
job runs on a laptop folder and on S3 / MinIO. The S3 endpoint is configuration (``storage.endpoint_url``,
else ``AWS_ENDPOINT_URL``); credentials come only from the standard AWS chain (environment variables,
shared credentials file, profile, instance role) of the process that uses the storage. They are resolved
lazily in each process and never stored in the object's state, its repr, errors or logs — which is also why a
Storage pickled to a Ray worker carries only the endpoint and region.

An endpoint that cannot be reached, missing credentials or a refused request raise :class:`StorageError`: a
one-line :class:`~rsvlm.errors.JobError` (and an ``OSError``) naming the endpoint or URI, never a secret.

Publishing (:meth:`Storage.publish_folder`) never deletes or overwrites what the job did not write: a
destination is replaced only when each of its files is one the caller vouches for (an older version it
published) or one an interrupted publish listed. Local staging folders are recognisable (``rsvlm-staging``
in the name) and locked by their owner; :meth:`Storage.staging` sweeps the ones whose owner is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Collection, Iterator, Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs

from rsvlm.config.storage import StorageConfig
from rsvlm.errors import JobError
from rsvlm.redaction import mask_url_credentials

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"

# Local folders a publish is assembled in: ``<base>/<prefix>rsvlm-staging-<pid>-<hex>``, beside the output
# (``<prefix>`` = ``.<output name>.``), or in the temporary folder for an S3 output (no prefix). Its owner holds
# an flock on ``….lock`` for its whole life; during a local swap the older version waits in ``….retired``.
STAGING_TAG = "rsvlm-staging"
# A lock file younger than this is never swept: its owner may be between creating and locking it.
STAGING_GRACE_S = 60.0
# Leftovers with no lock file to ask (and those of versions before the lock) are swept after this long.
STALE_AFTER_S = 6 * 3600.0
_STAGING_RE = re.compile(rf"{STAGING_TAG}-\d+-[0-9a-f]+(\.retired)?")
_LOCK_RE = re.compile(rf"{STAGING_TAG}-\d+-[0-9a-f]+\.lock")
_LEGACY_LOCAL_RE = re.compile(r"[0-9a-f]{32}\.(partial|old)")  # rsvlm before the staging tag
_LEGACY_TMP_PREFIX = "rsvlm-prepare-"
# Written first and deleted last by an S3 publish: the files a publish that was interrupted may have left.
PUBLISH_MARKER = ".rsvlm-publishing.json"

# Parts of pyarrow / AWS SDK error messages that mean the endpoint did not answer or refused the request.
_UNREACHABLE_HINTS = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused",
                      "Couldn't resolve host", "Could not resolve host", "Timeout was reached")
_DENIED_HINTS = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                 "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")
_DENIED_CODES = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden")
UNREACHABLE_FIX = "check storage.endpoint_url or AWS_ENDPOINT_URL"
CREDENTIALS_FIX = ("set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE for this process "
                   "(and its Ray workers)")


class StorageError(JobError, OSError):
    """The object store cannot be used: unreachable endpoint, no or wrong credentials, a missing bucket.

    A :class:`JobError` (one line, no traceback at the entry point) and an ``OSError`` (for code that
    catches I/O errors). Messages name the endpoint (credentials masked) or the URI, never a secret.
    """


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

    # -- errors ------------------------------------------------------------------------------------------

    def _endpoint_label(self) -> str:
        return mask_url_credentials(self.endpoint_url) if self.endpoint_url else "AWS S3 (default endpoint)"

    def unreachable(self) -> StorageError:
        return StorageError(self._endpoint_label(), "cannot connect to the S3 endpoint", UNREACHABLE_FIX)

    def _s3_error(self, uri: str, message: str) -> Optional[StorageError]:
        """The :class:`StorageError` a pyarrow / AWS SDK message means, or None for other errors."""
        if any(hint in message for hint in _UNREACHABLE_HINTS):
            return self.unreachable()
        if any(hint in message for hint in _DENIED_HINTS):
            return StorageError(uri, f"access denied by the S3 endpoint {self._endpoint_label()}",
                                f"check the AWS credentials and the bucket's permissions; {CREDENTIALS_FIX}")
        if "NoSuchBucket" in message or "NO_SUCH_BUCKET" in message:
            return StorageError(uri, "no such bucket", "create the bucket or correct the URI")
        return None

    @contextlib.contextmanager
    def _s3_errors(self, uri: str) -> Iterator[None]:
        """Turn pyarrow's S3 failures (connection refused, denied, no bucket) into one-line StorageErrors."""
        try:
            yield
        except StorageError:
            raise
        except OSError as exc:
            if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
                raise
            error = self._s3_error(uri, str(exc))
            if error is None:
                raise
            raise error from None

    # -- filesystems -------------------------------------------------------------------------------------

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """``(pyarrow filesystem, path in it)`` for ``uri``: what Ray Data and Ray Train take."""
        if is_remote(uri):
            return self._s3_filesystem(), str(uri)[len(S3_SCHEME):]
        return pafs.LocalFileSystem(), str(local_path(uri).absolute())

    @contextlib.contextmanager
    def local_folder(self, uri: str) -> Iterator[Path]:
        """A local folder holding the folder at ``uri``: the folder itself when local, else a temporary download."""
        if not is_remote(uri):
            yield local_path(uri)
            return
        filesystem, path = self.filesystem(uri)
        with tempfile.TemporaryDirectory(prefix="rsvlm-download-") as scratch:
            with self._s3_errors(uri):
                pafs.copy_files(path, scratch, source_filesystem=filesystem,
                                destination_filesystem=pafs.LocalFileSystem())
            yield Path(scratch)

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
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        bucket, _, key = str(uri)[len(S3_SCHEME):].partition("/")
        try:
            return self._s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"no such object: {uri}") from None
            if code == "NoSuchBucket":
                raise StorageError(uri, "no such bucket", "create the bucket or correct the URI") from None
            if code in _DENIED_CODES:
                raise StorageError(uri, f"access denied by the S3 endpoint {self._endpoint_label()} ({code})",
                                   f"check the AWS credentials and the bucket's permissions; {CREDENTIALS_FIX}"
                                   ) from None
            raise OSError(f"reading {uri} failed: {code or exc}") from None
        except BotoConnectionError:
            raise self.unreachable() from None
        except NoCredentialsError:
            raise StorageError(uri, "no S3 credentials found", CREDENTIALS_FIX) from None
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
        with self._s3_errors(uri):
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
        with self._s3_errors(uri):
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
        with self._s3_errors(uri), fs.open_output_stream(path) as stream:
            stream.write(data)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def delete(self, uri: str) -> None:
        """Remove a file if it is there."""
        if self.is_file(uri):
            fs, path = self.filesystem(uri)
            with self._s3_errors(uri):
                fs.delete_file(path)

    # -- publishing ----------------------------------------------------------------------------------------

    def replaceable_files(self, dest: str, owned: Collection[str] = ()) -> list[str]:
        """The files at ``dest`` that publishing there would replace; JobError naming ``dest`` when it may not.

        ``dest`` may be absent, an empty folder, or a folder (S3 prefix) whose every entry is in ``owned``
        (files of an older version the caller published, relative to ``dest``) or was listed by an
        interrupted publish (S3). A regular file, a symlink or a folder with anything else is refused, and
        left as it is.
        """
        fix = "choose another output, or move those files away yourself if the folder is meant to be replaced"
        if not is_remote(dest):
            path = local_path(dest)
            if path.is_symlink():
                raise JobError(dest, "is a symbolic link, not a folder", "give the folder it points to")
            if not path.exists():
                return []
            if not path.is_dir():
                raise JobError(dest, "is a file, not a folder; it is left as it is",
                               "choose another output (a new folder or an earlier prepared dataset)")
            entries = sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))
            dirs = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_dir() and not p.is_symlink()}
            allowed = set(owned)
            # A folder is ours when everything in it is: the shards may sit in subfolders.
            foreign = [e for e in entries if e not in allowed and not (e in dirs and any(
                o.startswith(e + "/") for o in allowed))]
            # Name a folder only when nothing inside it is named already.
            foreign = [e for e in foreign if not (e in dirs and any(f.startswith(e + "/") for f in foreign))]
        else:
            if self.is_file(dest):
                raise JobError(dest, "is an object, not a prefix; it is left as it is",
                               "choose another output prefix")
            entries = self.list_files(dest)
            allowed = set(owned) | self._interrupted_publish(dest)
            foreign = [e for e in entries if e not in allowed]
            fix = "choose another output prefix, or delete those objects yourself if they are meant to be replaced"
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise JobError(dest, f"exists and holds {len(foreign)} file(s) this job did not write ({shown}); "
                           "nothing was changed", fix)
        return [e for e in entries if is_remote(dest) or (local_path(dest) / e).is_file()]

    def _interrupted_publish(self, dest: str) -> set[str]:
        """The files an interrupted S3 publish to ``dest`` may have left (from its marker), with the marker."""
        marker = join(dest, PUBLISH_MARKER)
        if not self.is_file(marker):
            return set()
        try:
            listed = json.loads(self.read_text(marker)).get("files", [])
        except (ValueError, AttributeError):
            return set()  # not our marker after all: its neighbours stay foreign
        return {PUBLISH_MARKER, *(name for name in listed if isinstance(name, str))}

    def publish_folder(self, folder: Path, dest: str, *, last: str, replaces: Collection[str] = ()) -> None:
        """Copy the local ``folder`` to ``dest`` so that ``dest/last`` exists only once everything else does.

        ``replaces`` are the files of an older version at ``dest`` that the caller published and may be
        replaced or deleted; anything else there makes it refuse (:meth:`replaceable_files`), with nothing
        changed. Locally the folder is staged beside ``dest`` (a folder from :meth:`staging` is used as it is)
        and renamed into place, the older version moved aside in the same instant and then deleted. On S3 a
        marker listing the files in play is written first, the old ``last`` removed, the other files
        uploaded, stale files of the older version deleted, ``last`` uploaded, and the marker deleted: a
        reader that finds ``last`` finds a complete set, and a publish killed half-way is finished by the next.
        """
        folder = Path(folder)
        if not (folder / last).is_file():
            raise FileNotFoundError(f"{folder}: nothing to publish without {last}")
        existing = self.replaceable_files(dest, replaces)
        if not is_remote(dest):
            path = local_path(dest).absolute()
            if folder.parent.absolute() == path.parent and folder.name.startswith(f".{path.name}.{STAGING_TAG}-"):
                _swap_into_place(folder, path)
                return
            with self.staging(dest) as staged:
                shutil.copytree(folder, staged, dirs_exist_ok=True)
                _swap_into_place(staged, path)
            return
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self.write_text(join(dest, PUBLISH_MARKER), json.dumps({"files": sorted(set(existing) | set(names))}))
        self.delete(join(dest, last))
        for name in names:
            if name != last:
                self.write_bytes(join(dest, name), (folder / name).read_bytes())
        for stale in sorted(set(existing) - set(names) - {PUBLISH_MARKER}):
            self.delete(join(dest, stale))
        self.write_bytes(join(dest, last), (folder / last).read_bytes())
        self.delete(join(dest, PUBLISH_MARKER))

    @contextlib.contextmanager
    def staging(self, dest: str) -> Iterator[Path]:
        """A new, empty local folder to assemble what will be published at ``dest``; removed on exit.

        For a local ``dest`` it is ``.<name>.rsvlm-staging-<pid>-<hex>`` beside it (same filesystem: the
        publish is a rename, not a copy); for S3 it is in the temporary folder. Its owner holds an flock on
        the ``.lock`` file beside it while it lives, so the leftovers of a killed job are told apart from a
        live job's and removed here first (:func:`sweep_staging`).
        """
        base, prefix = _staging_place(dest)
        base.mkdir(parents=True, exist_ok=True)
        sweep_staging(base, prefix)
        if prefix:  # versions before this one staged local outputs in the temporary folder too
            sweep_staging(Path(tempfile.gettempdir()), "")
        token = f"{prefix}{STAGING_TAG}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        lock = base / f"{token}.lock"
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with contextlib.suppress(OSError):  # a filesystem without locks: the age rule sweeps instead
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            folder = base / token
            folder.mkdir()
            yield folder
        finally:
            shutil.rmtree(base / token, ignore_errors=True)
            shutil.rmtree(base / f"{token}.retired", ignore_errors=True)
            lock.unlink(missing_ok=True)  # last: the folders are never left without their lock
            os.close(fd)


def _staging_place(dest: str) -> tuple[Path, str]:
    """``(folder, name prefix)`` of the staging folders for ``dest``."""
    if is_remote(dest):
        return Path(tempfile.gettempdir()), ""
    path = local_path(dest).absolute()
    return path.parent, f".{path.name}."


def _swap_into_place(staged: Path, dest: Path) -> None:
    """Rename ``staged`` to ``dest``; an older ``dest`` folder is moved aside first and deleted after."""
    retired = staged.with_name(f"{staged.name}.retired")
    if dest.exists():
        if dest.is_symlink() or not dest.is_dir():
            raise JobError(str(dest), "is not a folder; it is left as it is", "choose another output")
        os.replace(dest, retired)
    try:
        os.replace(staged, dest)
    except OSError:
        if retired.exists() and not dest.exists():
            os.replace(retired, dest)  # put the older version back
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _owner_gone(lock: Path, now: float) -> tuple[bool, Optional[int]]:
    """``(True, fd holding the lock)`` when the job that created ``lock`` is gone (its flock is free)."""
    try:
        if now - lock.stat().st_mtime < STAGING_GRACE_S:
            return False, None
        fd = os.open(lock, os.O_RDWR)
    except OSError:  # gone already, or another user's
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its owner is alive
        os.close(fd)
        return False, None
    except OSError:  # no locks on this filesystem: only age tells
        if now - lock.stat().st_mtime < STALE_AFTER_S:
            os.close(fd)
            return False, None
    return True, fd


def sweep_staging(base: Path, prefix: str) -> list[Path]:
    """Remove the staging leftovers of killed jobs for one destination; the removed paths.

    In ``base``, among the names ``<prefix>rsvlm-staging-…``: a lock file whose flock nobody holds (its
    owner died; older than :data:`STAGING_GRACE_S`) goes with its folders; a staging or retired folder
    without a lock file goes when older than :data:`STALE_AFTER_S`, and so do the leftovers of rsvlm
    versions before the lock (``<prefix><hex>.partial`` / ``.old`` beside the output, ``rsvlm-prepare-*`` in
    the temporary folder). A live job's folders, locked, are never touched; nor is anything else.
    """
    now, removed = time.time(), []
    try:
        names = [p.name for p in base.glob(glob.escape(prefix) + "*")] if prefix else \
            [p.name for p in base.glob(f"{STAGING_TAG}-*")] + [p.name for p in base.glob(f"{_LEGACY_TMP_PREFIX}*")]
    except OSError:
        return removed
    rest = {name[len(prefix):]: name for name in names if name.startswith(prefix)}
    for tail, name in sorted(rest.items()):
        if not _LOCK_RE.fullmatch(tail):
            continue
        gone, fd = _owner_gone(base / name, now)
        if not gone:
            continue
        try:
            token = name[: -len(".lock")]
            for leftover in (base / token, base / f"{token}.retired"):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
                    removed.append(leftover)
            (base / name).unlink(missing_ok=True)
            removed.append(base / name)
        finally:
            os.close(fd)
    for tail, name in sorted(rest.items()):
        path = base / name
        orphan = _STAGING_RE.fullmatch(tail) and not (base / f"{name.removesuffix('.retired')}.lock").exists()
        legacy = (_LEGACY_LOCAL_RE.fullmatch(tail) if prefix else tail.startswith(_LEGACY_TMP_PREFIX))
        if not (orphan or legacy) or path in removed:
            continue
        try:
            if not path.is_dir() or path.is_symlink() or now - path.stat().st_mtime < STALE_AFTER_S:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


def _s3_filesystem(endpoint_url: Optional[str], region: Optional[str]) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with credentials from the standard AWS chain (resolved by boto3)."""
    import boto3

    session = boto3.Session()
    credentials = session.get_credentials()
    # Bounded retries: a dead endpoint fails in seconds, not minutes.
    kwargs: dict = {"region": region or session.region_name or "us-east-1",
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
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

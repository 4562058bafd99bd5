"""One job at a time per run name: a lock in the run's folder, held for the whole run.

Two jobs started with the same ``train.run_name`` would otherwise log into one MLflow run, register two model
versions of one checkpoint and write the same checkpoint folders. :func:`hold` takes the lock of the run's folder
(``train.storage_uri/<run name>/``) before anything of the run is touched, and the second job is refused with one
line naming the owner: ``train.run_name=X: run is in use by pid 1234 on host h since … (wait for it to finish,
or choose another train.run_name)``. The lock is released on every way out (success, exception, Ctrl-C); a later
job of the same name (a resume) takes it again.

**Local folder** (a path or ``file://``): ``<run folder>/rsvlm_run.lock``, locked with
``fcntl.flock(LOCK_EX | LOCK_NB)`` on an open descriptor. The kernel drops the lock when the process ends,
however it ends (``kill -9`` included), so there are no stale locks to clean up; the file only holds the owner
(host, pid, start time) for the refusal message and is removed on release. ``flock`` covers local disks and NFS
(Linux emulates it with POSIX locks there); jobs on two machines sharing some other network filesystem may not
see each other's lock: use S3 storage for those.

**S3** (``s3://``): a lease object ``<run folder>/rsvlm_run.lock`` holding its owner, a random token and its
time to live (``ttl_s``, :data:`LEASE_TTL_S` by default).

- *Create*: ``PutObject`` with ``If-None-Match: *``: of jobs creating it at the same time exactly one succeeds.
- *Heartbeat*: a daemon thread rewrites the lease every ``heartbeat_s`` (a quarter of ``ttl_s``) with
  ``If-Match: <the ETag of its last write>``, so a lease lives as long as its job and a renewal can only extend
  the job's own lease. A renewal that fails for a network reason is tried again a few seconds later; only if
  none succeeds for ``ttl_s`` does the lease expire.
- *Expiry*: a lease is expired when the S3 server's clock (the ``Date`` of a GET) is past its ``LastModified`` +
  ``ttl_s``: both times come from the server, so clock skew between machines does not matter.
- *Take-over*: an expired lease (its job died, or lost S3 for longer than ``ttl_s``) may be taken by the next
  job with ``PutObject If-Match: <the expired lease's ETag>``: of two jobs taking it over, one wins and the
  other sees the winner's live lease and is refused. A lease whose owner was a process of this same machine
  (same host name, boot and pid namespace) that no longer exists is taken over at once, so a crashed run is
  resumed on its machine without waiting out ``ttl_s``; elsewhere a crashed run's name is free after ``ttl_s``.
- *Release*: ``DeleteObject If-Match: <its ETag>``, so a job never deletes a lease another job took over.
- *Lost lease*: if a renewal finds the lease changed (taken over after it expired), the heartbeat stops, says so
  in the log, and the job ends with a one-line error (a JobError) instead of success: two jobs may have
  written the run's folder, so its checkpoints and MLflow run need checking.

S3 and MinIO implement these conditional requests atomically; moto's server (the tests' S3) checks and writes
in two steps, which is enough for the tests' sequential races.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Iterator, Optional

from rsvlm.data.storage import Storage, is_remote, local_path
from rsvlm.errors import JobError

log = logging.getLogger(__name__)

LOCK_FILE = "rsvlm_run.lock"
# How long an S3 lease lives without a renewal: also how long a run whose job died on another machine stays
# refused. The heartbeat renews it four times per ttl, so a few failed renewals in a row are harmless.
LEASE_TTL_S = 120.0
# How soon a renewal that failed (S3 unreachable, a timeout) is tried again.
RENEWAL_RETRY_S = 5.0


class RunInUseError(JobError):
    """Another job holds the run's lock (``str()``: ``<key>=<name>: run is in use by … (…)``)."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: for the refusal message, and to tell a dead process of this machine."""

    host: str
    pid: int
    started: float  # when the lock was taken, seconds since the epoch
    machine: str = ""  # boot id + pid namespace: a pid means the same process only where this matches

    @classmethod
    def current(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), time.time(), _machine_id())

    @classmethod
    def from_dict(cls, data: Any) -> Optional["Owner"]:
        try:
            return cls(str(data["host"]), int(data["pid"]), float(data["started"]), str(data.get("machine", "")))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} since {_local_time(self.started)}"

    def is_dead_here(self) -> bool:
        """True only when the owner was a process of this very machine and namespace that no longer exists."""
        if not self.machine or self.machine != _machine_id() or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # EPERM: alive, someone else's
            return False
        return False


class RunLock:
    """A held lock; :meth:`release` it (``hold`` does) when the run ends."""

    uri: str
    owner: Owner

    def release(self) -> None:
        raise NotImplementedError

    @property
    def lost(self) -> bool:
        """True once an S3 lease was taken over by another job while this one still ran."""
        return False


def lock_uri(folder_uri: str) -> str:
    """Where the lock of a run's folder lives."""
    return Storage.join(folder_uri, LOCK_FILE)


def acquire(storage: Storage, folder_uri: str, key: str, name: str, *, ttl_s: float = LEASE_TTL_S,
            heartbeat_s: Optional[float] = None) -> RunLock:
    """Lock the run folder ``folder_uri`` for run ``name`` (set by config ``key``, e.g. ``train.run_name``).

    Raises :class:`RunInUseError` naming the owner when another job holds it. ``ttl_s`` and ``heartbeat_s``
    (default ``ttl_s / 4``) apply to S3 leases only.
    """
    uri = lock_uri(folder_uri)
    owner = Owner.current()
    refuse = _refusal(key, name, uri)
    if not is_remote(uri):
        return _FileLock.acquire(local_path(uri), owner, refuse)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return _S3Lease.acquire(storage, uri, owner, refuse, ttl_s, heartbeat_s or ttl_s / 4)
    except (BotoCoreError, ClientError) as exc:
        reason = _error_code(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
        raise JobError(uri, f"could not take the run's lock ({reason})",
                       "check that the S3 endpoint (storage.endpoint_url or AWS_ENDPOINT_URL) answers and that the "
                       "credentials may write there") from None


@contextlib.contextmanager
def hold(storage: Storage, folder_uri: str, key: str, name: str, **options: Any) -> Iterator[RunLock]:
    """``acquire`` for the ``with`` block; released however the block ends.

    A lease lost during the block (see the module docstring) turns a successful block into a JobError.
    """
    lock = acquire(storage, folder_uri, key, name, **options)
    failed = True
    try:
        yield lock
        failed = False
    finally:
        lock.release()
        if lock.lost and not failed:
            raise JobError(f"{key}={name}", f"the run's lease {lock.uri} was taken over by another job while this "
                           "one ran (it could not be renewed for its time to live), so both may have written the run",
                           "check its checkpoints and MLflow run before using them")


def _refusal(key: str, name: str, uri: str):
    def refuse(owner: Optional[Owner], extra: str = "") -> RunInUseError:
        holder = owner.describe() if owner else "another job (owner unknown)"
        return RunInUseError(f"{key}={name}", f"run is in use by {holder}{extra}; lock {uri}",
                             f"wait for it to finish, or choose another {key}")
    return refuse


# -- local: flock ------------------------------------------------------------------------------------------


class _FileLock(RunLock):
    def __init__(self, path: Path, fd: int, owner: Owner, made_folder: bool):
        self.path, self.uri, self.owner = path, str(path), owner
        self._fd: Optional[int] = fd
        self._made_folder = made_folder  # the run's folder did not exist: an empty one is removed at release

    @classmethod
    def acquire(cls, path: Path, owner: Owner, refuse) -> "_FileLock":
        made_folder = not path.parent.exists()
        for _ in range(20):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # a releasing holder just removed the empty folder
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = _read_owner(fd)
                os.close(fd)
                raise refuse(holder) from None
            # A holder that released it removed the file: a lock on that old file guards nothing.
            try:
                current = os.stat(path)
                same = (current.st_dev, current.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(asdict(owner)) + "\n").encode(), 0)
            return cls(path, fd, owner, made_folder)
        raise OSError(f"{path}: could not lock it (it keeps being replaced)")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still locked, so nobody locks the file about to go
        os.close(fd)
        if self._made_folder:
            # A run that failed before writing anything leaves no empty folder behind (rmdir keeps a full one).
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()


def _read_owner(fd: int, wait_s: float = 1.0) -> Optional[Owner]:
    """The owner written in a lock file; the holder writes it just after locking, so wait a moment for it."""
    deadline = time.monotonic() + wait_s
    while True:
        data = os.pread(fd, 4096, 0)
        if data.strip():
            try:
                return Owner.from_dict(json.loads(data))
            except ValueError:
                pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


# -- S3: a lease with a heartbeat --------------------------------------------------------------------------


class _S3Lease(RunLock):
    def __init__(self, client, uri: str, owner: Owner, token: str, etag: str, ttl_s: float, heartbeat_s: float):
        self.uri, self.owner = uri, owner
        self.bucket, _, self.key = uri[len("s3://"):].partition("/")
        self._client, self._token, self._etag = client, token, etag
        self._ttl_s, self._heartbeat_s = ttl_s, heartbeat_s
        self._renewals = 0
        self._lost = False
        self._lock = threading.Lock()  # one request on the lease at a time (heartbeat vs release)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"rsvlm-lease-{self.key}", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self._lost

    @classmethod
    def acquire(cls, storage: Storage, uri: str, owner: Owner, refuse, ttl_s: float, heartbeat_s: float) -> "_S3Lease":
        client = _s3_client(storage)
        bucket, _, key = uri[len("s3://"):].partition("/")
        token = uuid.uuid4().hex
        body = _lease_body(owner, token, ttl_s, 0)
        for _ in range(5):
            etag = _put(client, bucket, key, body, IfNoneMatch="*")
            if etag:
                return cls(client, uri, owner, token, etag, ttl_s, heartbeat_s)
            current = _get(client, bucket, key)
            if current is None:
                continue  # released just now: create it again
            held, lease_etag, expires = current
            holder = Owner.from_dict(held.get("owner"))
            if expires is not None and not (holder and holder.is_dead_here()):
                raise refuse(holder, f" (its lease expires at {_local_time(expires)} unless renewed)")
            etag = _put(client, bucket, key, body, IfMatch=lease_etag)
            if etag:
                log.warning("%s: took over the lease of %s, which %s", uri,
                            holder.describe() if holder else "an unknown owner",
                            "expired" if expires is None else "died on this machine")
                return cls(client, uri, owner, token, etag, ttl_s, heartbeat_s)
            # Another job changed it between our read and our write: look again.
        raise refuse(None, " (its lease keeps changing)")

    def _renew(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._renewals += 1
            body = _lease_body(self.owner, self._token, self._ttl_s, self._renewals)
            etag = _put(self._client, self.bucket, self.key, body, IfMatch=self._etag)
            if etag is None:
                self._lost = True
                self._stop.set()
                log.error("%s: the run's lease was taken over by another job (it was not renewed for %.0f s); "
                          "this job no longer holds the run", self.uri, self._ttl_s)
                return
            self._etag = etag

    def _heartbeat(self) -> None:
        delay, failing = self._heartbeat_s, False
        while not self._stop.wait(delay):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - S3 unreachable or slow: try again soon
                if not failing:
                    log.warning("%s: could not renew the run's lease (%s); retrying every %.0f s", self.uri,
                                exc, RENEWAL_RETRY_S)
                failing, delay = True, min(RENEWAL_RETRY_S, self._heartbeat_s)
                continue
            if failing:
                log.warning("%s: the run's lease is renewed again", self.uri)
            failing, delay = False, self._heartbeat_s

    def release(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=30)
        with self._lock:
            self._stop.set()
            if self._lost or self._etag is None:
                return
            etag, self._etag = self._etag, None
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
            except ClientError as exc:
                code = _error_code(exc)
                if code in ("PreconditionFailed", "NoSuchKey", "404"):
                    return  # taken over after it expired, or gone: not ours to delete
                log.warning("%s: could not release the run's lease (%s); it expires by itself in %.0f s",
                            self.uri, code or exc, self._ttl_s)
            except BotoCoreError as exc:
                log.warning("%s: could not release the run's lease (%s); it expires by itself in %.0f s",
                            self.uri, exc, self._ttl_s)


def _lease_body(owner: Owner, token: str, ttl_s: float, renewals: int) -> bytes:
    # The renewal count and time make each write's content (and so its ETag, often the MD5 of the content)
    # differ from the last one's: an If-Match with an older ETag must fail.
    now = time.time()
    return (json.dumps({"owner": asdict(owner), "token": token, "ttl_s": ttl_s, "renewals": renewals,
                        "renewed": now, "expires_at": now + ttl_s}) + "\n").encode()


def _put(client, bucket: str, key: str, body: bytes, **condition: str) -> Optional[str]:
    """A conditional PutObject: the new ETag, or None when the condition failed (or the object is gone)."""
    from botocore.exceptions import ClientError

    try:
        return client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                                 **condition)["ETag"]
    except ClientError as exc:
        # 409 ConditionalRequestConflict: another conditional write of the key was in flight; it wins.
        if _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"):
            return None
        raise


def _get(client, bucket: str, key: str) -> Optional[tuple[dict, str, Optional[float]]]:
    """``(lease, its ETag, when it expires or None when it has)``; None when there is no lease."""
    from botocore.exceptions import ClientError

    try:
        response = client.get_object(Bucket=bucket, Key=key)
        data = response["Body"].read()
    except ClientError as exc:
        if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    try:
        lease = json.loads(data)
        ttl_s = float(lease["ttl_s"])
    except (ValueError, KeyError, TypeError):
        lease, ttl_s = {}, LEASE_TTL_S  # not ours to parse: expires like a lease of the default ttl
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        server_now = parsedate_to_datetime(date).timestamp() if date else time.time()
    except (TypeError, ValueError):
        server_now = time.time()
    modified = response["LastModified"].timestamp()
    expires_at = modified + ttl_s
    # In the server's clock; reported in ours (the difference between the two added to our now).
    expires = None if server_now >= expires_at else time.time() + (expires_at - server_now)
    return lease, response["ETag"], expires


def _error_code(exc) -> str:
    error = getattr(exc, "response", {}) or {}
    return str(error.get("Error", {}).get("Code", "") or error.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _s3_client(storage: Storage):
    """A boto3 client for the lease (standard credential chain), with short timeouts: a heartbeat must not hang."""
    import boto3
    from botocore.config import Config

    session = boto3.Session()
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=15)
    return session.client("s3", endpoint_url=storage.endpoint_url,
                          region_name=storage.options.region or session.region_name or "us-east-1", config=config)


# -- helpers ------------------------------------------------------------------------------------------------


def _machine_id() -> str:
    """This boot of this machine and this pid namespace: where a pid names one process ('' if unknown)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def _local_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).astimezone().isoformat(timespec="seconds")

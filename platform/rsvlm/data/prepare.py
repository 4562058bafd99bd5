"""Turn a raw instruction file into a prepared dataset: canonical JSONL shards, rejects and a manifest.

Source, images and output may each be a local path, a ``file://`` or an ``s3://`` URI. A prepared dataset
appears only when complete: it is staged (beside a local output, in the temporary folder for an S3 one) and
published with ``manifest.json`` last (``Storage.publish_folder``), so a reader that finds the manifest finds
every shard. An output that holds anything prepare_data did not write is refused and left as it is, and a
dataset with no records is never published. Every mistake a user can fix is a one-line
:class:`~rsvlm.errors.JobError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pyarrow.fs as pafs

from rsvlm.config.data import DataConfig, DataFormat, DataVerify, OnError
from rsvlm.data.formats import detect_format, parse_records
from rsvlm.data.images import image_problem
from rsvlm.data.records import Record, RecordError, check_record
from rsvlm.data.storage import Storage, resolve_inside
from rsvlm.data.synthetic import write_dataset
from rsvlm.errors import JobError

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
# The manifest's per-shard facts: [{"name", "bytes", "sha256", "records"}], in the order of "shards".
SHARD_FILES = "shard_files"
# The manifest's "format": how a folder written by prepare_data is told apart from anything else.
MANIFEST_FORMAT = "rsvlm-prepared/1"
# Remote image checks wait on the network, not the CPU: overlap them.
IMAGE_CHECK_THREADS = 8
# At most this many problems in PrepareError.listing().
LISTED_PROBLEMS = 50
# Keys of a record: a one-line JSON object with one of them is a JSONL file of one record.
_RECORD_KEYS = {"id", "conversations", "question_id", "image"}


class PrepareError(JobError):
    """Bad records and nothing written: ``on_error=fail`` found some, or ``on_error=skip`` rejected them all.

    ``str()`` is one line (the count and the first problem); :meth:`listing` gives every problem as
    ``FILE:LINE: id=…: reason``, one per line, which ``jobs/prepare_data.py`` prints before that line.
    """

    def __init__(self, problems: list[RecordError], source: Optional[str] = None, *, all_rejected: bool = False):
        self.problems, self.source, self.all_rejected = problems, source, all_rejected
        what = source or (problems[0].file if problems else "data.source")
        first = f"; the first: {problems[0]}" if problems else ""
        if all_rejected:
            why = f"all {len(problems)} record(s) were rejected, so there is no dataset; nothing was written{first}"
            fix = "fix the records (every problem is listed by prepare_data), then run it again"
        else:
            why = f"{len(problems)} bad record(s); nothing was written{first}"
            fix = "fix them, or set on_error=skip to keep the good records and list the others in rejects.jsonl"
        super().__init__(what, why, fix)

    def listing(self) -> str:
        """Every problem (the first :data:`LISTED_PROBLEMS`), one ``FILE:LINE: id=…: reason`` per line."""
        shown = "\n".join(str(p) for p in self.problems[:LISTED_PROBLEMS])
        more = len(self.problems) - LISTED_PROBLEMS
        return shown + (f"\n… and {more} more" if more > 0 else "")

    def __reduce__(self):
        problems = [p.to_dict() for p in self.problems]
        return (_rebuild_prepare_error, (problems, self.source, self.all_rejected))


def _rebuild_prepare_error(problems: list[dict], source: Optional[str], all_rejected: bool) -> PrepareError:
    return PrepareError([RecordError(p["file"], p["where"], p["id"], p["reason"]) for p in problems], source,
                        all_rejected=all_rejected)


class NotPreparedError(JobError, FileNotFoundError):
    """A location read as a prepared dataset has no manifest (a JobError, and a FileNotFoundError)."""


@dataclass
class PreparedDataset:
    uri: str
    manifest: dict[str, Any]


def prepare_dataset(cfg: DataConfig, storage: Optional[Storage] = None) -> PreparedDataset:
    """Check every record of ``cfg.source`` (and its image under ``cfg.image_root``) and publish the dataset.

    Raises :class:`~rsvlm.errors.JobError` before anything is written when the output holds something else
    than an earlier prepared dataset, the source is missing, empty or not a list of records, the image root
    does not exist, or no record is left; :class:`PrepareError` for bad records under ``on_error=fail``.
    """
    storage = storage or Storage()
    check_output(cfg.uri, storage)  # first: checking a large dataset takes long, a wrong output is quick to tell
    if cfg.synthetic is not None:
        if storage.is_remote(cfg.image_root):
            raise JobError(f"data.image_root={cfg.image_root}", "synthetic data is generated to a local folder",
                           "give a local path")
        write_dataset(cfg.image_root, seed=cfg.synthetic.seed, num_train_images=cfg.synthetic.num_train_images,
                      num_test_images=cfg.synthetic.num_test_images, image_size=cfg.synthetic.image_size,
                      object_scale=cfg.synthetic.object_scale)
    image_root = cfg.image_root if storage.is_remote(cfg.image_root) else str(Path(cfg.image_root).resolve())
    records, problems = check_all(cfg, storage, image_root)
    if problems and cfg.on_error is OnError.fail:
        raise PrepareError(problems, cfg.source)
    if not records:
        if problems:
            raise PrepareError(problems, cfg.source, all_rejected=True)
        raise JobError(cfg.source, "holds no records, so there is no dataset; nothing was written",
                       "give an instruction file with at least one record")
    manifest = {
        "format": MANIFEST_FORMAT,
        "records": len(records),
        "rejected": len(problems),
        "source": cfg.source,
        "image_root": image_root,
        "by_task": dict(sorted(Counter(r.task for r in records).items())),
        "by_source": dict(sorted(Counter(r.source for r in records).items())),
        "images": len({r.image for r in records if r.image}),
        "shards": [],
    }
    with storage.staging(cfg.uri) as staging:
        _write_shards(staging, records, problems, manifest, cfg.records_per_shard)
        # Asked again: another prepare may have published there meanwhile.
        storage.publish_folder(staging, cfg.uri, last=MANIFEST, replaces=_owned_files(cfg.uri, storage))
    return PreparedDataset(cfg.uri, manifest)


def is_prepared_manifest(manifest: Any) -> bool:
    """True for a manifest prepare_data wrote: this version's ``format``, or an older one's shards + fingerprint."""
    if not isinstance(manifest, dict):
        return False
    if str(manifest.get("format", "")).startswith("rsvlm-prepared/"):
        return True
    return isinstance(manifest.get("shards"), list) and isinstance(manifest.get("fingerprint"), str)


def check_output(uri: str, storage: Storage) -> None:
    """JobError naming ``uri`` unless it is absent, empty, or a dataset prepare_data wrote (then replaced)."""
    storage.replaceable_files(uri, _owned_files(uri, storage))
    if storage.is_remote(uri):
        bucket = uri[len("s3://"):].split("/", 1)[0]
        if storage.info(f"s3://{bucket}").type == pafs.FileType.NotFound:
            raise JobError(uri, f"no such bucket: {bucket}", "create the bucket or correct output= / data.uri")


def _owned_files(uri: str, storage: Storage) -> set[str]:
    """The files of the prepared dataset at ``uri`` that a new version may replace: those its manifest names."""
    manifest_uri = storage.join(uri, MANIFEST)
    if not storage.is_file(manifest_uri):
        return set()
    try:
        manifest = json.loads(storage.read_text(manifest_uri))
    except ValueError:
        manifest = None
    if not is_prepared_manifest(manifest):
        raise JobError(uri, f"holds a {MANIFEST} that prepare_data did not write; nothing was changed",
                       "choose another output= / data.uri")
    return {MANIFEST, REJECTS, *(name for name in manifest["shards"] if isinstance(name, str))}


def read_input(storage: Storage, uri: str, key: str) -> str:
    """The text of an input file; JobError naming it when it is missing, a folder, not UTF-8 or empty."""
    if not storage.is_file(uri):
        why = "is a folder, not a file" if storage.exists(uri) else "no such file"
        raise JobError(uri, why, f"set {key} to the instruction file")
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise JobError(uri, "no such file", f"set {key} to the instruction file") from None
    except ValueError as exc:
        raise JobError(uri, str(exc).removeprefix(f"{uri}: "), "give the file as UTF-8 JSON or JSONL") from None
    if not text.removeprefix("\ufeff").strip():
        raise JobError(uri, "the file is empty", f"{key} must be a JSON list or JSONL of records")
    return text


def check_shape(text: str, source: str, fmt: DataFormat) -> None:
    """JobError when ``text`` is one JSON object instead of a list or JSONL of records (RSVQA excepted)."""
    body = text.removeprefix("\ufeff").strip()
    if fmt is DataFormat.rsvqa or not body.startswith("{"):
        return
    try:
        whole = json.loads(body)
    except json.JSONDecodeError:
        return  # JSONL, or a syntax error that the record checks name with its line and column
    if not isinstance(whole, dict):
        return
    if fmt is DataFormat.auto and ("questions" in whole or "answers" in whole):
        return  # RSVQA: format detection says what it is
    lists = [key for key, value in whole.items()
             if isinstance(value, list) and value and all(isinstance(item, dict) for item in value[:10])]
    if "\n" not in body and (_RECORD_KEYS & whole.keys() or not lists):
        return  # a JSONL file of one record (which the record checks judge)
    hint = f"; its '{lists[0]}' list looks like the records: save that list as the file" if lists else ""
    raise JobError(source, "is one JSON object, not a list of records",
                   f"give a JSON list [{{…}}, …] or JSONL (one record per line){hint}")


def check_image_root(storage: Storage, image_root: str) -> None:
    """JobError unless the image root is a local folder, or an S3 prefix with at least one object."""
    fix = "set image_root= / data.image_root to the folder the records' image paths are relative to"
    if storage.is_remote(image_root):
        if storage.info(image_root).type != pafs.FileType.Directory:
            raise JobError(image_root, "the image root does not exist (no object under this prefix)", fix)
        return
    path = Path(image_root)
    if not path.exists():
        raise JobError(image_root, "the image root does not exist", fix)
    if not path.is_dir():
        raise JobError(image_root, "the image root is not a folder", fix)


def check_all(cfg: DataConfig, storage: Storage, image_root: str) -> tuple[list[Record], list[RecordError]]:
    """Every good record and every problem of ``cfg.source``, in file order."""
    text = read_input(storage, cfg.source, "source= / data.source")
    companion = read_input(storage, cfg.answers, "answers= / data.answers") if cfg.answers else None
    check_shape(text, cfg.source, cfg.format)
    try:
        fmt = detect_format(text, cfg.source) if cfg.format is DataFormat.auto else cfg.format
        raw_records = list(parse_records(text, cfg.source, fmt, companion_text=companion))
    except RecordError as exc:  # the whole file is unreadable JSON
        return [], [exc]
    except ValueError as exc:  # no known format, a missing companion file…
        raise JobError(cfg.source, str(exc).removeprefix(f"{cfg.source}: "),
                       "set format= / data.format to the file's format, or give another file") from None
    dataset_name = cfg.name or posixpath.splitext(posixpath.basename(cfg.source.rstrip("/")))[0]
    candidates: list[tuple[str, Record]] = []
    problems: list[tuple[int, RecordError]] = []
    seen_ids: dict[str, str] = {}
    for index, (where, raw) in enumerate(raw_records):
        try:
            record = check_record(raw, cfg.source, where, dataset_name)
            if record.id in seen_ids:
                raise RecordError(cfg.source, where, record.id, f"duplicate id (first at {seen_ids[record.id]})")
            seen_ids[record.id] = where
            candidates.append((where, record))
        except RecordError as exc:
            problems.append((index, exc))
    images = sorted({r.image for _, r in candidates if r.image})
    if images:  # before any image is read: one line, not one rejected record per image
        check_image_root(storage, image_root)
    verdicts = _check_images(storage, image_root, images)
    records = []
    order = {where: index for index, (where, _) in enumerate(raw_records)}
    for where, record in candidates:
        if record.image and verdicts[record.image]:
            problems.append((order[where], RecordError(cfg.source, where, record.id, verdicts[record.image])))
        else:
            records.append(record)
    return records, [problem for _, problem in sorted(problems, key=lambda item: item[0])]


def check_image(storage: Storage, image_root: str, relative: str) -> Optional[str]:
    """Why an image cannot be used, or None. Paths may not leave ``image_root`` (``..``, absolute, symlinks)."""
    try:
        uri = resolve_inside(image_root, relative)
    except ValueError:
        return f"image path '{relative}' escapes the image root"
    if not storage.is_remote(uri):
        # Symlinks exist only locally: follow them and require the target to stay inside the root too.
        if not Path(uri).resolve().is_relative_to(Path(image_root).resolve()):
            return f"image path '{relative}' escapes the image root"
    try:  # one request: reading tells a missing object apart, no separate existence check needed
        data = storage.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError):
        return f"image not found: {relative}"
    if not data:
        return f"image is empty: {relative}"
    problem = image_problem(data)
    return f"image {problem}: {relative}" if problem else None


def _check_images(storage: Storage, image_root: str, images: list[str]) -> dict[str, Optional[str]]:
    verdicts: dict[str, Optional[str]] = {}
    progress = _Progress("images checked", len(images))
    with ThreadPoolExecutor(IMAGE_CHECK_THREADS) as pool:
        for image, verdict in zip(images, pool.map(lambda rel: check_image(storage, image_root, rel), images)):
            verdicts[image] = verdict
            progress.advance()
    progress.close()
    return verdicts


class _Progress:
    """A plain progress line at most every few seconds (no carriage returns: job logs stay readable)."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.done, self.last = 0, time.monotonic()

    def advance(self) -> None:
        self.done += 1
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            print(f"{self.what}: {self.done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(f"{self.what}: {self.done}/{self.total}", file=sys.stderr, flush=True)


def _write_shards(staging: Path, records: list[Record], problems: list[RecordError], manifest: dict[str, Any],
                  per_shard: int) -> None:
    fingerprint = hashlib.sha256()
    for start in range(0, max(len(records), 1), per_shard):
        name = f"shard-{start // per_shard:05d}.jsonl"
        chunk = records[start:start + per_shard]
        data = "".join(r.to_json() + "\n" for r in chunk).encode("utf-8")
        fingerprint.update(data)
        (staging / name).write_bytes(data)
        manifest["shards"].append(name)
        # What finetune checks before training (verify_prepared): sizes always, the hashes when it reads the bytes.
        manifest.setdefault(SHARD_FILES, []).append(
            {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "records": len(chunk)})
    (staging / REJECTS).write_text("".join(json.dumps(p.to_dict()) + "\n" for p in problems), encoding="utf-8")
    manifest["fingerprint"] = fingerprint.hexdigest()
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_manifest(prepared: str, storage: Optional[Storage] = None) -> dict[str, Any]:
    """The manifest of a prepared dataset; a clear error when the location is not one (or is incomplete)."""
    storage = storage or Storage()
    uri = storage.join(prepared, MANIFEST)
    if not storage.is_file(uri):
        raise NotPreparedError(prepared, f"not a prepared dataset (no {MANIFEST})",
                               "run jobs/prepare_data.py with output= this location, or correct data.uri")
    return json.loads(storage.read_text(uri))


def prepared_manifest(cfg: DataConfig, storage: Optional[Storage] = None) -> dict[str, Any]:
    """The manifest of ``cfg.uri``; the built-in synthetic dataset is generated and prepared first if missing.

    Other data is never prepared implicitly: checking a real dataset can take an hour, and should be its
    own step (``jobs/prepare_data.py``) with its own report of rejected records.
    """
    storage = storage or Storage()
    manifest_uri = storage.join(cfg.uri, MANIFEST)
    if not storage.is_file(manifest_uri):
        if cfg.synthetic is None:
            raise NotPreparedError(f"data.uri={cfg.uri}", f"no prepared dataset there (no {MANIFEST})",
                                   f"make it first: {prepare_command(cfg)}")
        prepare_dataset(cfg, storage)
    try:
        return read_manifest(cfg.uri, storage)
    except ValueError as exc:  # a manifest that is not JSON (JobError is not a ValueError)
        raise JobError(manifest_uri, f"not valid JSON ({exc})", f"run jobs/prepare_data.py again: "
                       f"{prepare_command(cfg)}") from None


def read_prepared_records(prepared: str, storage: Optional[Storage] = None) -> Iterator[dict[str, Any]]:
    """Every canonical record of a prepared dataset, shard by shard (for small consumers; training streams)."""
    storage = storage or Storage()
    for shard in read_manifest(prepared, storage)["shards"]:
        for line in storage.read_text(storage.join(prepared, shard)).splitlines():
            yield json.loads(line)


# -- finetune's check of a prepared dataset -----------------------------------------------------------------

_HASH_CHUNK = 8 << 20


@dataclass
class Verification:
    """What :func:`verify_prepared` checked, for one log line."""

    uri: str
    shards: int
    bytes: int
    checked: str
    seconds: float

    def line(self) -> str:
        return (f"data: {self.uri}: {self.shards} shard(s), {self.bytes / 1e6:.1f} MB; checked {self.checked} "
                f"in {self.seconds:.3f} s")


def prepare_command(cfg: DataConfig, manifest: Optional[dict[str, Any]] = None) -> str:
    """The command that (re)makes the prepared dataset ``cfg.uri``."""
    manifest = manifest or {}
    if cfg.synthetic is not None:
        return (f"python jobs/prepare_data.py data=synthetic data.uri={cfg.uri} data.source={cfg.source} "
                f"data.image_root={cfg.image_root}")

    def given(value: Any, fallback: Any) -> str:
        return str(value) if value not in (None, "", "???") else str(fallback or "…")

    command = (f"python jobs/prepare_data.py source={given(cfg.source, manifest.get('source'))} "
               f"image_root={given(cfg.image_root, manifest.get('image_root'))} output={cfg.uri}")
    if cfg.format is not DataFormat.auto:
        command += f" format={cfg.format.value}"
    if cfg.answers:
        command += f" answers={cfg.answers}"
    return command


def verify_prepared(prepared: str, manifest: dict[str, Any], storage: Optional[Storage] = None,
                    mode: DataVerify = DataVerify.auto, full_max_mb: int = 512, *,
                    fix: Optional[str] = None) -> Verification:
    """Check the shards of the prepared dataset ``prepared`` against its ``manifest``; cheap by default.

    Always (every ``mode``): every shard the manifest lists exists and is a file, and has the byte size the
    manifest records for it (``shard_files``: one metadata request per shard, no byte is read). A manifest
    written before sizes were recorded gets the presence check only.

    With ``mode=full``, or ``mode=auto`` when the shards total at most ``full_max_mb`` MiB, every byte is
    read as well (on S3: downloaded): each shard's sha256 and line count against the manifest's (when
    recorded), and the dataset's ``fingerprint``, the sha256 over all shards in order. ``mode=sizes`` never
    reads the shards, so a same-size change inside one is caught only when training reaches the bad line
    (``rsvlm.data.samples.parse_lines`` names its file and line).

    Raises :class:`~rsvlm.errors.JobError` naming the dataset, the shard and what differs, with ``fix``
    (default: run jobs/prepare_data.py again).
    """
    storage = storage or Storage()
    started = time.perf_counter()
    what = f"prepared dataset {prepared}"
    fix = fix or "run jobs/prepare_data.py again to rewrite it"
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not all(isinstance(name, str) for name in shards):
        raise JobError(what, f"{MANIFEST} has no list of shards: not a manifest prepare_data wrote", fix)
    recorded = {entry.get("name"): entry for entry in manifest.get(SHARD_FILES) or [] if isinstance(entry, dict)}
    has_sizes = bool(shards) and all(isinstance(recorded.get(name, {}).get("bytes"), int) for name in shards)

    total = 0
    infos = _shard_infos(prepared, shards, storage)
    for name in shards:
        info = infos[name]
        if info.type != pafs.FileType.File:
            why = "is a folder, not a file" if info.type == pafs.FileType.Directory else "is missing"
            raise JobError(what, f"shard {name} {why} ({MANIFEST} lists it)", fix)
        size = int(info.size)
        expected = recorded.get(name, {}).get("bytes")
        if isinstance(expected, int) and size != expected:
            change = "cut short" if size < expected else "grown"
            raise JobError(what, f"shard {name} is {size} bytes but {MANIFEST} records {expected} (it was "
                           f"{change} or rewritten after prepare_data wrote it)", fix)
        total += size
    checked = "every shard's size" if has_sizes else (
        f"that every shard exists ({MANIFEST} is from an older prepare_data and records no sizes)")

    full = mode is DataVerify.full or (mode is DataVerify.auto and total <= full_max_mb * (1 << 20))
    if full:
        _check_contents(prepared, manifest, shards, recorded, storage, what, fix)
        checked += " and the sha256 fingerprint of all bytes"
    else:
        why = "data.verify=sizes" if mode is DataVerify.sizes else (
            f"{total / (1 << 20):.0f} MiB > data.verify_full_max_mb={full_max_mb}")
        checked += f" (not the fingerprint: {why})"
    return Verification(prepared, len(shards), total, checked, time.perf_counter() - started)


def _shard_infos(prepared: str, shards: list[str], storage: Storage) -> dict[str, pafs.FileInfo]:
    """Each shard's file info from one listing of the dataset's folder (one LIST request per 1,000 objects on
    S3 instead of a HEAD per shard); a shard the listing does not show is asked for by itself."""
    filesystem, root = storage.filesystem(prepared)
    listed = {info.base_name: info for info in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))}
    return {name: listed[name] if "/" not in name and name in listed else storage.info(storage.join(prepared, name))
            for name in shards}


def _check_contents(prepared: str, manifest: dict[str, Any], shards: list[str], recorded: dict[str, Any],
                    storage: Storage, what: str, fix: str) -> None:
    """Read every shard: its sha256 and line count against ``recorded``, all of them against the fingerprint."""
    fingerprint = hashlib.sha256()
    for name in shards:
        digest, lines = hashlib.sha256(), 0
        filesystem, path = storage.filesystem(storage.join(prepared, name))
        with filesystem.open_input_stream(path) as stream:
            while chunk := stream.read(_HASH_CHUNK):
                digest.update(chunk)
                fingerprint.update(chunk)
                lines += chunk.count(b"\n")
        expected = recorded.get(name, {})
        if isinstance(expected.get("sha256"), str) and digest.hexdigest() != expected["sha256"]:
            raise JobError(what, f"shard {name} has sha256 {digest.hexdigest()[:16]}… but {MANIFEST} records "
                           f"{expected['sha256'][:16]}… (same size: its content was changed in place)", fix)
        if isinstance(expected.get("records"), int) and lines != expected["records"]:
            raise JobError(what, f"shard {name} has {lines} lines but {MANIFEST} records {expected['records']} "
                           "records", fix)
    if fingerprint.hexdigest() != manifest.get("fingerprint"):
        whose = (f"every shard matches its own sha256, so {MANIFEST} itself was changed" if recorded
                 else "a shard was changed after prepare_data wrote it")
        raise JobError(what, f"the shards' fingerprint (sha256 over all shards in order) is "
                       f"{fingerprint.hexdigest()[:16]}… but {MANIFEST} records "
                       f"{str(manifest.get('fingerprint'))[:16]}… ({whose})", fix)


def verified_manifest(cfg: DataConfig, storage: Optional[Storage] = None) -> dict[str, Any]:
    """:func:`prepared_manifest` (synthetic data prepared when missing), checked by :func:`verify_prepared`
    with ``cfg.verify`` / ``cfg.verify_full_max_mb``; prints one line saying what was checked."""
    storage = storage or Storage()
    manifest = prepared_manifest(cfg, storage)
    verification = verify_prepared(cfg.uri, manifest, storage, cfg.verify, cfg.verify_full_max_mb,
                                   fix=f"run jobs/prepare_data.py again: {prepare_command(cfg, manifest)}")
    print(verification.line(), file=sys.stderr, flush=True)
    return manifest

"""Turn a raw instruction file into a prepared dataset: canonical JSONL shards, rejects and a manifest.

Source, images and output may each be a local path, a ``file://`` or an ``s3://`` URI. A prepared dataset
appears only when complete: it is staged in a local temporary folder and published with ``manifest.json``
last (``Storage.publish_folder``), so a reader that finds the manifest finds every shard.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from rsvlm.config.schema import DataConfig, DataFormat, OnError
from rsvlm.data.formats import detect_format, parse_records
from rsvlm.data.images import image_problem
from rsvlm.data.records import Record, RecordError, check_record
from rsvlm.data.storage import Storage, resolve_inside

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
# Remote image checks wait on the network, not the CPU: overlap them.
IMAGE_CHECK_THREADS = 8


class PrepareError(RuntimeError):
    """``on_error=fail`` found bad records; ``problems`` lists them and nothing was written."""

    def __init__(self, problems: list[RecordError]):
        self.problems = problems
        shown = "\n".join(str(p) for p in problems[:50])
        more = f"\n… and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} bad record(s); nothing was written:\n{shown}{more}")


@dataclass
class PreparedDataset:
    uri: str
    manifest: dict[str, Any]


def prepare_dataset(cfg: DataConfig, storage: Optional[Storage] = None) -> PreparedDataset:
    """Check every record of ``cfg.source`` (and its image under ``cfg.image_root``) and publish the dataset."""
    storage = storage or Storage()
    if cfg.synthetic is not None:
        from rsvlm.data.synthetic import write_dataset

        if storage.is_remote(cfg.image_root):
            raise ValueError(f"data.image_root={cfg.image_root}: synthetic data is generated to a local folder")
        write_dataset(cfg.image_root, seed=cfg.synthetic.seed, num_train_images=cfg.synthetic.num_train_images,
                      num_test_images=cfg.synthetic.num_test_images, image_size=cfg.synthetic.image_size)
    if not storage.is_file(cfg.source):
        raise FileNotFoundError(f"data.source: no such file: {cfg.source}")
    image_root = cfg.image_root if storage.is_remote(cfg.image_root) else str(Path(cfg.image_root).resolve())
    records, problems = check_all(cfg, storage, image_root)
    if problems and cfg.on_error is OnError.fail:
        raise PrepareError(problems)
    manifest = {
        "records": len(records),
        "rejected": len(problems),
        "source": cfg.source,
        "image_root": image_root,
        "by_task": dict(sorted(Counter(r.task for r in records).items())),
        "by_source": dict(sorted(Counter(r.source for r in records).items())),
        "images": len({r.image for r in records if r.image}),
        "shards": [],
    }
    with tempfile.TemporaryDirectory(prefix="rsvlm-prepare-") as staging:
        _write_shards(Path(staging), records, problems, manifest, cfg.records_per_shard)
        storage.publish_folder(Path(staging), cfg.uri, last=MANIFEST)
    return PreparedDataset(cfg.uri, manifest)


def check_all(cfg: DataConfig, storage: Storage, image_root: str) -> tuple[list[Record], list[RecordError]]:
    """Every good record and every problem of ``cfg.source``, in file order."""
    text = storage.read_text(cfg.source)
    companion = storage.read_text(cfg.answers) if cfg.answers else None
    try:
        fmt = detect_format(text, cfg.source) if cfg.format is DataFormat.auto else cfg.format
        raw_records = list(parse_records(text, cfg.source, fmt, companion_text=companion))
    except RecordError as exc:  # the whole file is unreadable JSON
        return [], [exc]
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
    verdicts = _check_images(storage, image_root, sorted({r.image for _, r in candidates if r.image}))
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
        lines = "".join(r.to_json() + "\n" for r in records[start:start + per_shard])
        fingerprint.update(lines.encode())
        (staging / name).write_text(lines, encoding="utf-8")
        manifest["shards"].append(name)
    (staging / REJECTS).write_text("".join(json.dumps(p.to_dict()) + "\n" for p in problems), encoding="utf-8")
    manifest["fingerprint"] = fingerprint.hexdigest()
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_manifest(prepared: str, storage: Optional[Storage] = None) -> dict[str, Any]:
    """The manifest of a prepared dataset; a clear error when the location is not one (or is incomplete)."""
    storage = storage or Storage()
    uri = storage.join(prepared, MANIFEST)
    if not storage.is_file(uri):
        raise FileNotFoundError(f"{prepared} is not a prepared dataset (no {MANIFEST}); run jobs/prepare_data.py")
    return json.loads(storage.read_text(uri))


def prepared_manifest(cfg: DataConfig, storage: Optional[Storage] = None) -> dict[str, Any]:
    """The manifest of ``cfg.uri``; the built-in synthetic dataset is generated and prepared first if missing.

    Other data is never prepared implicitly: checking a real dataset can take an hour, and should be its
    own step (``jobs/prepare_data.py``) with its own report of rejected records.
    """
    storage = storage or Storage()
    if cfg.synthetic is not None and not storage.is_file(storage.join(cfg.uri, MANIFEST)):
        prepare_dataset(cfg, storage)
    return read_manifest(cfg.uri, storage)


def read_prepared_records(prepared: str, storage: Optional[Storage] = None) -> Iterator[dict[str, Any]]:
    """Every canonical record of a prepared dataset, shard by shard (for small consumers; training streams)."""
    storage = storage or Storage()
    for shard in read_manifest(prepared, storage)["shards"]:
        for line in storage.read_text(storage.join(prepared, shard)).splitlines():
            yield json.loads(line)

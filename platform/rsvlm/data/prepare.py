"""Turn a raw instruction file into a prepared dataset: canonical JSONL shards, rejects and a manifest.

A prepared dataset appears only when complete: everything is written into a temporary folder beside the
output, ``manifest.json`` last, and the folder is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rsvlm.config.schema import DataConfig, OnError
from rsvlm.data.images import open_rgb
from rsvlm.data.records import Record, RecordError, check_record, read_llava_file

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
MIN_IMAGE_SIDE = 8


class PrepareError(RuntimeError):
    """``on_error=fail`` found bad records; ``problems`` lists them and nothing was written."""

    def __init__(self, problems: list[RecordError]):
        self.problems = problems
        shown = "\n".join(str(p) for p in problems[:50])
        more = f"\n… and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} bad record(s); nothing was written:\n{shown}{more}")


@dataclass
class PreparedDataset:
    path: Path
    manifest: dict[str, Any]


def prepare_dataset(cfg: DataConfig) -> PreparedDataset:
    """Check every record of ``cfg.source`` (and its image under ``cfg.image_root``) and write the dataset."""
    if cfg.synthetic is not None:
        from rsvlm.data.synthetic import write_dataset

        write_dataset(cfg.image_root, seed=cfg.synthetic.seed, num_train_images=cfg.synthetic.num_train_images,
                      num_test_images=cfg.synthetic.num_test_images, image_size=cfg.synthetic.image_size)
    source = Path(cfg.source)
    if not source.is_file():
        raise FileNotFoundError(f"data.source: no such file: {source}")
    image_root = Path(cfg.image_root).resolve()
    records, problems = check_all(source, image_root, source_name=cfg.name)
    if problems and cfg.on_error is OnError.fail:
        raise PrepareError(problems)
    manifest = {
        "records": len(records),
        "rejected": len(problems),
        "source": str(source),
        "image_root": str(image_root),
        "by_task": dict(sorted(Counter(r.task for r in records).items())),
        "by_source": dict(sorted(Counter(r.source for r in records).items())),
        "images": len({r.image for r in records if r.image}),
        "shards": [],
    }
    return PreparedDataset(*_write_atomically(Path(cfg.prepared_uri), records, problems, manifest,
                                              cfg.records_per_shard))


def check_all(source: Path, image_root: Path, source_name: str) -> tuple[list[Record], list[RecordError]]:
    """Every good record and every problem of a file, in file order."""
    records: list[Record] = []
    problems: list[RecordError] = []
    seen_ids: dict[str, str] = {}
    image_verdicts: dict[str, Optional[str]] = {}
    try:
        raw_records = list(read_llava_file(source))
    except RecordError as exc:  # the whole file is unreadable JSON
        return [], [exc]
    for where, raw in raw_records:
        try:
            record = check_record(raw, str(source), where, source_name)
            if record.id in seen_ids:
                raise RecordError(str(source), where, record.id, f"duplicate id (first at {seen_ids[record.id]})")
            if record.image is not None:
                if record.image not in image_verdicts:
                    image_verdicts[record.image] = check_image(image_root, record.image)
                if image_verdicts[record.image]:
                    raise RecordError(str(source), where, record.id, image_verdicts[record.image])
            seen_ids[record.id] = where
            records.append(record)
        except RecordError as exc:
            problems.append(exc)
    return records, problems


def check_image(image_root: Path, relative: str) -> Optional[str]:
    """Why the image cannot be used, or None. Paths may not leave ``image_root`` (``..``, absolute, symlinks)."""
    path = (image_root / relative).resolve()
    if os.path.isabs(relative) or not path.is_relative_to(image_root):
        return f"image path '{relative}' escapes the image root"
    if not path.is_file():
        return f"image not found: {relative}"
    if path.stat().st_size == 0:
        return f"image is empty: {relative}"
    try:
        image = open_rgb(path)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt files
        return f"image does not decode ({type(exc).__name__}: {exc}): {relative}"
    if min(image.size) < MIN_IMAGE_SIDE:
        return f"image is too small ({image.size[0]}x{image.size[1]}): {relative}"
    return None


def _write_atomically(output: Path, records: list[Record], problems: list[RecordError], manifest: dict[str, Any],
                      per_shard: int) -> tuple[Path, dict[str, Any]]:
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
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
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output, manifest


def read_manifest(prepared: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dataset; a clear error when the folder is not one (or is incomplete)."""
    path = Path(prepared) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{prepared} is not a prepared dataset (no {MANIFEST}); run jobs/prepare_data.py")
    return json.loads(path.read_text(encoding="utf-8"))

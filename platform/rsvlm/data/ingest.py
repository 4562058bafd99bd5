"""Ray Data pipeline from a prepared dataset to training samples, sharded across Ray Train workers."""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np
import ray
from ray.data import RandomSeedConfig

from rsvlm.data.samples import SampleBuilder, parse_lines
from rsvlm.data.storage import Storage

# Hash buckets for the validation split: fine enough for any fraction a user would write down.
_SPLIT_BUCKETS = 1_000_000


def is_held_out(record_id: str, val_fraction: float) -> bool:
    """Whether a record belongs to the validation split: decided by a hash of its id, not by a random draw,
    so the split is the same in every run, resume and worker count."""
    return zlib.crc32(record_id.encode("utf-8")) % _SPLIT_BUCKETS < val_fraction * _SPLIT_BUCKETS


def _keep_records(batch: dict[str, np.ndarray], val_fraction: float, validation: bool, tasks: Sequence[str],
                  storage: Storage, shard_uris: dict[str, str]) -> dict[str, np.ndarray]:
    """The lines of the split (training or validation), and of ``tasks`` when given."""
    records = parse_lines(batch, storage, shard_uris, keys=("id",))  # a bad line: JobError <shard>:<line>
    held_out = np.array([is_held_out(str(record["id"]), val_fraction) for record in records], dtype=bool)
    keep = held_out if validation else ~held_out
    if tasks:
        keep &= np.array([record.get("task") in tasks for record in records], dtype=bool)
    return {column: values[keep] for column, values in batch.items()}


def _read_records(prepared_uri: str, manifest: dict[str, Any], builder: SampleBuilder, val_fraction: float,
                  validation: bool, tasks: Sequence[str] = ()) -> tuple[ray.data.Dataset, dict[str, str]]:
    """The dataset's lines (``text``, and ``path``: the shard each came from), and those paths' URIs."""
    # Progress bars turn into a log line per operator every few seconds in job logs; the training loop
    # prints its own progress.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # A JobError raised in a map step (a bad line: <shard>:<line>) reaches the job as itself; Ray's default
    # UserCodeException wrapper keeps it only as traceback text, and the job could print no one-line error.
    context.raise_original_map_exception = True
    storage = builder.storage
    filesystem, _ = storage.filesystem(prepared_uri)
    uris = [storage.join(prepared_uri, shard) for shard in manifest["shards"]]
    paths = [storage.filesystem(uri)[1] for uri in uris]
    # Ray Data may report a path with or without its leading slash; either maps back to the URI.
    shard_uris = {**{path.lstrip("/"): uri for path, uri in zip(paths, uris)}, **dict(zip(paths, uris))}
    # Each line keeps its shard's path, so a bad line is named by file and line (samples.parse_lines).
    dataset = ray.data.read_text(paths, filesystem=filesystem, include_paths=True)
    if val_fraction > 0 or tasks:
        # On the JSON lines, before any image is fetched: held-out records cost nothing to skip.
        dataset = dataset.map_batches(_keep_records, batch_format="numpy",
                                      fn_kwargs={"val_fraction": val_fraction, "validation": validation,
                                                 "tasks": tuple(tasks), "storage": storage,
                                                 "shard_uris": shard_uris})
    return dataset, shard_uris


def training_dataset(prepared_uri: str, manifest: dict[str, Any], builder: SampleBuilder, *, shuffle: bool,
                     seed: int, batch_size: int = 32, val_fraction: float = 0.0,
                     tasks: Sequence[str] = ()) -> ray.data.Dataset:
    """A lazy Ray Dataset of training rows; Ray Train splits it across workers (``streaming_split``).

    Lines are read as text and parsed in the map step: conversations vary in shape, and Arrow's JSON schema
    inference fails on such columns. Shuffling the lines is cheap, before any image is decoded. Records
    held out by ``val_fraction`` (see :func:`is_held_out`), and those of other tasks than ``tasks`` when
    given, are left out.
    """
    dataset, shard_uris = _read_records(prepared_uri, manifest, builder, val_fraction, validation=False, tasks=tasks)
    if shuffle:
        # A new permutation every epoch (every execution of the dataset), the same sequence of permutations
        # for the same seed.
        dataset = dataset.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    return dataset.map_batches(builder, batch_size=batch_size, batch_format="numpy",
                               fn_kwargs={"shard_uris": shard_uris})


def validation_dataset(prepared_uri: str, manifest: dict[str, Any], builder: SampleBuilder, *, val_fraction: float,
                       batch_size: int = 32, tasks: Sequence[str] = ()) -> ray.data.Dataset:
    """The held-out records of ``val_fraction`` (of ``tasks`` when given) as samples, in a stable order."""
    if val_fraction <= 0:
        raise ValueError("val_fraction must be > 0 for a validation dataset")
    dataset, shard_uris = _read_records(prepared_uri, manifest, builder, val_fraction, validation=True, tasks=tasks)
    dataset = dataset.map_batches(builder, batch_size=batch_size, batch_format="numpy",
                                  fn_kwargs={"shard_uris": shard_uris})
    # Every worker iterates the whole validation set; in the same order they form the same batches, which
    # FSDP needs (each forward is a collective, so all workers must run the same number).
    dataset.context.execution_options.preserve_order = True
    return dataset

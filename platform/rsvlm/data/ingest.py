"""Ray Data pipeline from a prepared dataset to training samples, sharded across Ray Train workers."""

from __future__ import annotations

from pathlib import Path

import ray

from rsvlm.data.prepare import read_manifest
from rsvlm.data.samples import SampleBuilder


def training_dataset(prepared_uri: str, builder: SampleBuilder, *, shuffle: bool, seed: int,
                     batch_size: int = 32) -> ray.data.Dataset:
    """A lazy Ray Dataset of training rows; Ray Train splits it across workers (``streaming_split``).

    Lines are read as text and parsed in the map step: conversations vary in shape, and Arrow's JSON schema
    inference fails on such columns. Shuffling the lines is cheap, before any image is decoded.
    """
    # Progress bars turn into a log line per operator every few seconds in job logs; the training loop
    # prints its own progress.
    ray.data.DataContext.get_current().enable_progress_bars = False
    manifest = read_manifest(prepared_uri)
    paths = [str(Path(prepared_uri) / shard) for shard in manifest["shards"]]
    dataset = ray.data.read_text(paths)
    if shuffle:
        dataset = dataset.random_shuffle(seed=seed)
    return dataset.map_batches(builder, batch_size=batch_size, batch_format="numpy")

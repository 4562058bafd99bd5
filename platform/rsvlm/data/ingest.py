"""Ray Data pipeline from a prepared dataset to training samples, sharded across Ray Train workers."""

from __future__ import annotations

from typing import Any

import ray
from ray.data import RandomSeedConfig

from rsvlm.data.samples import SampleBuilder


def training_dataset(prepared_uri: str, manifest: dict[str, Any], builder: SampleBuilder, *, shuffle: bool,
                     seed: int, batch_size: int = 32) -> ray.data.Dataset:
    """A lazy Ray Dataset of training rows; Ray Train splits it across workers (``streaming_split``).

    Lines are read as text and parsed in the map step: conversations vary in shape, and Arrow's JSON schema
    inference fails on such columns. Shuffling the lines is cheap, before any image is decoded.
    """
    # Progress bars turn into a log line per operator every few seconds in job logs; the training loop
    # prints its own progress.
    ray.data.DataContext.get_current().enable_progress_bars = False
    storage = builder.storage
    filesystem, _ = storage.filesystem(prepared_uri)
    paths = [storage.filesystem(storage.join(prepared_uri, shard))[1] for shard in manifest["shards"]]
    dataset = ray.data.read_text(paths, filesystem=filesystem)
    if shuffle:
        # A new permutation every epoch (every execution of the dataset), the same sequence of permutations
        # for the same seed.
        dataset = dataset.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    return dataset.map_batches(builder, batch_size=batch_size, batch_format="numpy")

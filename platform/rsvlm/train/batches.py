"""The micro-batches a worker trains and validates on, from its Ray Data shards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from rsvlm.config.job import JobConfig
from rsvlm.data.samples import collate
from rsvlm.train import distributed
from rsvlm.train.fully_masked import fully_masked_error


@dataclass
class TrainBatch:
    inputs: dict[str, torch.Tensor]
    tasks: list[str]  # each row's task (task-routed adapters use them)
    dropped: int  # fully masked rows left out since the previous batch
    epoch: int  # passes over this worker's shard completed before this batch

    @property
    def rows(self) -> int:
        return self.inputs["input_ids"].shape[0]


def training_batches(job: JobConfig, image_processor, device: torch.device) -> Iterator[TrainBatch]:
    """Endless batches from this worker's shard, epoch after epoch; rows are fully-masked-free."""
    shard = distributed.dataset_shard("train")
    epoch = 0
    while True:
        produced = False
        dropped_since = 0
        for batch in shard.iter_batches(batch_size=job.train.micro_batch_size, batch_format="numpy",
                                        prefetch_batches=2, drop_last=False):
            inputs, dropped = collate(batch, image_processor, device)
            dropped_since += dropped
            if inputs is None:
                continue
            produced = True
            yield TrainBatch(inputs, list(batch["task"][~batch["fully_masked"]]), dropped_since, epoch)
            dropped_since = 0
        if not produced:
            if dropped_since and job.data.max_fully_masked_fraction < 1.0:
                raise fully_masked_error(dropped_since, dropped_since, job, f"every sample of epoch {epoch} of "
                                         "this worker's shard; nothing to train on")
            raise RuntimeError(f"epoch {epoch}: this worker's data shard produced no usable sample")
        epoch += 1


class ValidationBatches:
    """Up to ``train.val_batches`` micro-batches of the validation set, the same on every worker.

    They are read once and kept (as uint8 rows, a few MB per batch), so a checkpoint's validation does not
    start the validation pipeline again.
    """

    def __init__(self, job: JobConfig, image_processor, device: torch.device):
        self.job, self.image_processor, self.device = job, image_processor, device
        self.rows: Optional[list[dict]] = None

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], list[str]]]:
        if self.rows is None:
            self.rows = []
            shard = distributed.dataset_shard("val")
            for batch in shard.iter_batches(batch_size=self.job.train.micro_batch_size, batch_format="numpy",
                                            drop_last=False):
                self.rows.append(batch)
                if len(self.rows) >= self.job.train.val_batches:
                    break
        for batch in self.rows:
            inputs, _ = collate(batch, self.image_processor, self.device)
            if inputs is not None:
                yield inputs, list(batch["task"][~batch["fully_masked"]])

"""Instruction data settings (``data`` group): the raw source, its format, the prepared dataset and
how it becomes samples, and the built-in synthetic generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from rsvlm.config.checks import require


class DataFormat(Enum):
    """Instruction-file formats ``prepare_data`` reads (``auto`` detects; see ``rsvlm.data.formats``)."""

    auto = "auto"
    llava = "llava"  # LLaVA / RS-GPT4V conversation JSON list or JSONL
    geochat = "geochat"  # GeoChat instruct JSON (LLaVA-shaped, task prefixes [grounding] [refer] [identify])
    fitrs = "fitrs"  # FIT-RS instructions, and FIT-RSFG / FIT-RSRC question files
    rsvqa = "rsvqa"  # RSVQA questions/answers JSON pair


class OnError(Enum):
    fail = "fail"
    skip = "skip"


class DataVerify(Enum):
    """How finetune checks a prepared dataset against its manifest on the driver, before Ray starts.

    ``sizes``: every shard exists with the byte size the manifest records (one metadata request per shard).
    ``full``: that, plus reading every shard to check its sha256 and the dataset's fingerprint (on S3 this
    downloads the shards). ``auto``: ``sizes``, plus ``full`` when the shards total at most
    ``data.verify_full_max_mb``.
    """

    auto = "auto"
    sizes = "sizes"
    full = "full"


# data.synthetic.object_scale values that still leave room for every category in most scenes (the generator,
# rsvlm.data.synthetic.write_dataset, refuses others too).
OBJECT_SCALE_RANGE = (0.5, 2.0)


@dataclass
class SyntheticDataConfig:
    """Settings of the built-in synthetic remote-sensing generator (``rsvlm.data.synthetic``)."""

    seed: int = 0
    num_train_images: int = 400
    num_test_images: int = 60
    image_size: int = 128
    # Multiplies every object's size range; 1 = the generator's own sizes (rsvlm.data.synthetic.layout).
    object_scale: float = 1.0

    def __post_init__(self) -> None:
        require(self.num_train_images > 0, "data.synthetic.num_train_images", "must be > 0")
        require(self.num_test_images > 0, "data.synthetic.num_test_images", "must be > 0")
        require(self.image_size >= 32, "data.synthetic.image_size", "must be >= 32 pixels")
        low, high = OBJECT_SCALE_RANGE
        require(low <= self.object_scale <= high, "data.synthetic.object_scale", f"must be in [{low}, {high}]")


@dataclass
class DataConfig:
    """Where instruction data comes from and how it becomes training samples."""

    # Names the dataset in each record's `source` (unless the record names its own) and in the manifest's
    # counts; None = the source file's name without its extension.
    name: Optional[str] = None
    # Raw instruction file (LLaVA conversation JSON list or JSONL) and the folder its image paths are relative to;
    # required (every data/*.yaml sets them or asks for them).
    source: str = MISSING
    image_root: str = MISSING
    format: DataFormat = DataFormat.auto
    # The answers file of an RSVQA pair (format rsvqa: source is the questions file).
    answers: Optional[str] = None
    # The prepared dataset: canonical JSONL shards + manifest.json written by prepare_data (its `output`),
    # read by finetune. A local path, file:// or s3:// URI.
    uri: str = "${workdir}/data/prepared"
    on_error: OnError = OnError.fail
    records_per_shard: int = 10_000
    # When set, prepare_data first generates this synthetic dataset into image_root.
    synthetic: Optional[SyntheticDataConfig] = None
    max_length: int = 256
    # LLaVA silently trains on samples whose labels are all masked ("tokenization mismatch"); we count them
    # and refuse to train when more than this fraction of a dataset would be fully masked.
    max_fully_masked_fraction: float = 0.01
    shuffle: bool = True
    # Share of the prepared records held out for val/loss, chosen by a hash of each record's id: stable
    # across runs, resumes and worker counts, and decided before any image is read. 0 = no validation.
    val_fraction: float = 0.01
    # Train only on records of these tasks (e.g. [caption] for stage 1); empty = every task.
    tasks: list[str] = field(default_factory=list)
    # Images fetched concurrently per preprocessing batch. 1 is fastest when the store answers in about a
    # millisecond (local disk, an endpoint on the same machine); raise it (8–16) for a remote S3 whose GETs
    # wait tens of milliseconds.
    fetch_threads: int = 1
    # What finetune checks of the prepared dataset before training (DataVerify): shard sizes always, the
    # full fingerprint (every byte read) with `full`, or with `auto` when the shards total <= verify_full_max_mb.
    verify: DataVerify = DataVerify.auto
    verify_full_max_mb: int = 512

    def __post_init__(self) -> None:
        require(self.max_length >= 16, "data.max_length", "must be >= 16 tokens")
        require(self.verify_full_max_mb >= 0, "data.verify_full_max_mb", "must be >= 0")
        require(0.0 <= self.max_fully_masked_fraction <= 1.0, "data.max_fully_masked_fraction", "must be in [0, 1]")
        require(self.records_per_shard > 0, "data.records_per_shard", "must be > 0")
        require(self.fetch_threads >= 1, "data.fetch_threads", "must be >= 1")
        require(0.0 <= self.val_fraction < 0.5, "data.val_fraction", "must be in [0, 0.5)")

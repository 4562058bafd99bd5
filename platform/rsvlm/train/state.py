"""What a checkpoint holds besides the model, so that a run resumes where it stopped.

``training_state.pt`` (loaded with ``weights_only=True``: tensors and plain Python values, no code):

* ``step``: optimizer steps done;
* ``optimizer``: AdamW's moments keyed by parameter name (whole, also under FSDP);
* ``scheduler``: the learning-rate schedule's position;
* ``rng``: each worker's Python and torch (CPU and CUDA) generator states, in rank order;
* ``data``: the data position, see :class:`DataPosition`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

TRAINING_STATE_FILE = "training_state.pt"


@dataclass
class DataPosition:
    """How far through the data a run is.

    Ray Data cannot seek into a shuffled stream, so a resumed run does not replay the rest of the
    interrupted epoch's permutation: it continues the epoch count and the sample count, and draws a fresh
    permutation seeded by the run's attempt (see ``rsvlm.train.finetune``), so a restart never re-reads the
    start of the same order it already trained on.
    """

    epoch: int = 0
    samples_seen: int = 0  # over all workers, since the run began
    samples_into_epoch: int = 0


@dataclass
class TrainingState:
    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]]
    data: DataPosition = field(default_factory=DataPosition)


def rng_state() -> dict[str, Any]:
    """This process's random generator states."""
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any]) -> None:
    """Put back states taken by :func:`rng_state`."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_worker(seed: int, rank: int) -> None:
    """Seed a fresh run's worker: each rank its own stream, so dropout masks differ across data-parallel ranks."""
    random.seed(seed * 1_000_003 + rank)
    torch.manual_seed(seed * 1_000_003 + rank)


def save_training_state(directory: Path, state: TrainingState) -> Path:
    path = Path(directory) / TRAINING_STATE_FILE
    # Not dataclasses.asdict: it deep-copies every tensor of the optimizer state.
    payload = {"step": state.step, "optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng,
               "data": asdict(state.data)}
    torch.save(payload, path)
    return path


def load_training_state(directory: Path) -> Optional[TrainingState]:
    """The state saved in ``directory``, or None for a checkpoint without one (a final-only export)."""
    path = Path(directory) / TRAINING_STATE_FILE
    if not path.is_file():
        return None
    payload = torch.load(path, weights_only=True, map_location="cpu")
    return TrainingState(step=payload["step"], optimizer=payload["optimizer"], scheduler=payload["scheduler"],
                         rng=payload["rng"], data=DataPosition(**payload["data"]))

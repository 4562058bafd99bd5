"""What a checkpoint holds besides the model, so that a run resumes where it stopped.

Like the weights, it is never a pickle: its tensors go to ``training_state.safetensors`` and the rest to
``training_state.json``, which names each tensor where it belongs. It holds:

* ``step``: optimizer steps done;
* ``optimizer``: AdamW's moments keyed by parameter name (whole, also under FSDP);
* ``scheduler``: the learning-rate schedule's position;
* ``rng``: each worker's Python and torch (CPU and CUDA) generator states, in rank order;
* ``data``: the data position, see :class:`DataPosition`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

TRAINING_STATE_FILE = "training_state.json"
TRAINING_TENSORS_FILE = "training_state.safetensors"


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
    """Write ``state`` into ``directory``; returns the JSON file's path."""
    tensors: dict[str, torch.Tensor] = {}
    payload = {"step": state.step, "optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng,
               "data": asdict(state.data)}
    encoded = _encode(payload, "", tensors)
    save_file(tensors, str(Path(directory) / TRAINING_TENSORS_FILE))
    path = Path(directory) / TRAINING_STATE_FILE
    path.write_text(json.dumps(encoded) + "\n")
    return path


def load_training_state(directory: Path) -> Optional[TrainingState]:
    """The state saved in ``directory``, or None for a checkpoint without one."""
    path = Path(directory) / TRAINING_STATE_FILE
    if not path.is_file():
        return None
    tensors = load_file(str(Path(directory) / TRAINING_TENSORS_FILE))
    payload = _decode(json.loads(path.read_text()), tensors)
    return TrainingState(step=payload["step"], optimizer=payload["optimizer"], scheduler=payload["scheduler"],
                         rng=payload["rng"], data=DataPosition(**payload["data"]))


# JSON keeps neither tensors, tuples nor non-string keys; these markers carry them (optimizer states are
# keyed by parameter index or name, Python's RNG state is a tuple).
_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {_TENSOR: path}
    if isinstance(value, dict):
        return {_DICT: [[key, _encode(item, f"{path}/{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(item, f"{path}/{i}", tensors) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{path}/{i}", tensors) for i, item in enumerate(value)]
    return value


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(_decode(item, tensors) for item in value[_TUPLE])
        return {key: _decode(item, tensors) for key, item in value[_DICT]}
    return value

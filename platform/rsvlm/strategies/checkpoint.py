"""Self-describing model checkpoints: any strategy's folder loads back without outside knowledge.

Layout::

    strategy.json          {"name", "config": strategy config, "base_model": model config, "format": 1}
    adapter_model.safetensors + adapter_config.json   (adapter strategies; trainable parts included)
    model.safetensors + config.json                   (full fine-tuning)
    aligned_parts.safetensors                         (align, stage 1: the parts it trained)
    init_weights.safetensors                          (a run started from stage-1 weights, model.init_from)
    processor/             tokenizer + image processor
    job_config.yaml        the resolved config of the job that trained it
    trainer_state.json     step, final metrics

Weights are safetensors only, never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoProcessor

from rsvlm.config import JobConfig, from_dict, to_dict
from rsvlm.config.model import ModelConfig
from rsvlm.config.strategy import StrategyConfig, StrategyName
from rsvlm.errors import JobError
from rsvlm.model.build import LoadedModel, load_model
from rsvlm.strategies.align import ALIGNED_PARTS_FILE, load_parts
from rsvlm.strategies.registry import build_strategy

STRATEGY_FILE = "strategy.json"
PROCESSOR_DIR = "processor"
JOB_CONFIG_FILE = "job_config.yaml"
TRAINER_STATE_FILE = "trainer_state.json"  # step and final metrics
INIT_WEIGHTS_FILE = "init_weights.safetensors"
FORMAT_VERSION = 1


def save_checkpoint(directory: Path, model: nn.Module, processor, job: JobConfig,
                    trainer_state: Optional[Mapping[str, Any]] = None,
                    state_dict: Optional[Mapping[str, Any]] = None,
                    init_weights: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write ``model`` (as trained by ``job.strategy``) and everything needed to load it into ``directory``.

    ``state_dict`` is the gathered full weights of a sharded (FSDP) model; None saves ``model``'s own.
    ``init_weights`` are the stage-1 weights the run started from (``model.init_from``): saved with it, the
    checkpoint is the whole model (a stage-2 adapter alone is not).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain = to_dict(job)
    build_strategy(job.strategy).save(model, directory, state_dict)
    if init_weights:
        save_file({key: value.contiguous().cpu() for key, value in init_weights.items()},
                  str(directory / INIT_WEIGHTS_FILE), metadata={"format": "pt"})
    processor.save_pretrained(directory / PROCESSOR_DIR)
    (directory / STRATEGY_FILE).write_text(json.dumps(
        {"format": FORMAT_VERSION, "name": job.strategy.name.value, "config": plain["strategy"],
         "base_model": plain["model"]}, indent=2) + "\n")
    (directory / JOB_CONFIG_FILE).write_text(OmegaConf.to_yaml(plain))
    (directory / TRAINER_STATE_FILE).write_text(json.dumps(dict(trainer_state or {}), indent=2) + "\n")
    return directory


def load_checkpoint(directory: Path) -> LoadedModel:
    """The model saved in ``directory`` by :func:`save_checkpoint`, ready for inference."""
    directory = Path(directory)
    spec_path = directory / STRATEGY_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{directory} is not an rsvlm checkpoint (no {STRATEGY_FILE})")
    strategy, model_config = checkpoint_configs(directory)
    base = load_model(model_config)
    load_parts(base.model, _carried_init_weights(directory), directory / INIT_WEIGHTS_FILE)
    model = build_strategy(strategy).load(base.model, directory)
    processor = AutoProcessor.from_pretrained(directory / PROCESSOR_DIR)
    return LoadedModel(model.eval(), processor, model_config)


def checkpoint_configs(directory: Path) -> tuple[StrategyConfig, ModelConfig]:
    """The strategy and base-model configs a checkpoint was trained with."""
    spec = json.loads((Path(directory) / STRATEGY_FILE).read_text())
    return from_dict(spec["config"], StrategyConfig), from_dict(spec["base_model"], ModelConfig)


def init_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The stage-1 weights of the align checkpoint in ``directory``, for ``model.init_from``: the parts it
    trained over any it started from itself. Another strategy's checkpoint is refused: its weights are a
    whole model or an adapter, not a starting point for another strategy."""
    directory = Path(directory)
    if not (directory / STRATEGY_FILE).is_file():
        raise JobError(f"model.init_from={directory}", f"not an rsvlm checkpoint (no {STRATEGY_FILE})",
                       "give an align run's checkpoint folder, models:/<name>@<alias> or models:/<model_id>")
    strategy, _ = checkpoint_configs(directory)
    if strategy.name is not StrategyName.align:
        raise JobError(f"model.init_from={directory}", f"a '{strategy.name.value}' checkpoint, not a stage-1 one",
                       "start from an align run (strategy=align), e.g. models:/rsvlm-<model>-align@candidate")
    return _carried_init_weights(directory) | load_file(str(directory / ALIGNED_PARTS_FILE))


def _carried_init_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The stage-1 weights a checkpoint's run started from (``init_weights.safetensors``); none for most runs."""
    path = Path(directory) / INIT_WEIGHTS_FILE
    return load_file(str(path)) if path.is_file() else {}

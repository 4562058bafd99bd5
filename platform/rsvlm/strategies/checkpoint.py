"""Self-describing model checkpoints: any strategy's folder loads back without outside knowledge.

Layout::

    strategy.json          {"name", "config": strategy config, "base_model": model config, "format": 1}
    adapter_model.safetensors + adapter_config.json   (adapter strategies; trainable parts included)
    model.safetensors + config.json                   (full fine-tuning)
    processor/             tokenizer + image processor
    job_config.yaml        the resolved config of the job that trained it
    trainer_state.json     step, final metrics

Weights are safetensors only, never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import OmegaConf
from torch import nn
from transformers import AutoProcessor

from rsvlm.config import JobConfig, from_dict, to_dict
from rsvlm.config.model import ModelConfig
from rsvlm.config.strategy import StrategyConfig
from rsvlm.model.build import LoadedModel, load_model
from rsvlm.strategies.registry import build_strategy

STRATEGY_FILE = "strategy.json"
PROCESSOR_DIR = "processor"
JOB_CONFIG_FILE = "job_config.yaml"
TRAINER_STATE_FILE = "trainer_state.json"  # step and final metrics
FORMAT_VERSION = 1


def save_checkpoint(directory: Path, model: nn.Module, processor, job: JobConfig,
                    trainer_state: Optional[Mapping[str, Any]] = None,
                    state_dict: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` (as trained by ``job.strategy``) and everything needed to load it into ``directory``.

    ``state_dict`` is the gathered full weights of a sharded (FSDP) model; None saves ``model``'s own.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain = to_dict(job)
    build_strategy(job.strategy).save(model, directory, state_dict)
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
    model = build_strategy(strategy).load(base.model, directory)
    processor = AutoProcessor.from_pretrained(directory / PROCESSOR_DIR)
    return LoadedModel(model.eval(), processor, model_config)


def checkpoint_configs(directory: Path) -> tuple[StrategyConfig, ModelConfig]:
    """The strategy and base-model configs a checkpoint was trained with."""
    spec = json.loads((Path(directory) / STRATEGY_FILE).read_text())
    return from_dict(spec["config"], StrategyConfig), from_dict(spec["base_model"], ModelConfig)

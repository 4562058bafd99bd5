"""Putting MoE-LoRA layers into a model and taking them out again: inject, save, load, aux loss, merge.

The functions mirror what peft does for LoRA (``get_peft_model``, ``save_pretrained``, ``from_pretrained``,
``merge_and_unload``) without a wrapper class: the model stays the transformers model it was, with its
target linear layers replaced by :class:`MoeLoraLinear` and its :class:`MoeLoraConfig` attached as
``moe_lora_config``, so everything that finds parts by identity (``rsvlm.model.parts``) keeps working.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rsvlm.config.strategy import Routing
from rsvlm.strategies.moe_lora.config import MoeLoraConfig
from rsvlm.strategies.moe_lora.layer import MoeLoraLinear

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_ATTRIBUTE = "moe_lora_config"


def inject_moe_lora(model: nn.Module, config: MoeLoraConfig) -> nn.Module:
    """Replace ``model``'s target linear layers by MoE-LoRA layers (in place) and set what trains.

    Trains the adapters (experts, routers or task gates) and the ``modules_to_save``; freezes the rest, as
    :func:`rsvlm.strategies.base.apply_trainability` does for the parts configured ``frozen`` / ``adapter``.
    """
    if find_moe_lora_config(model) is not None:
        raise ValueError("the model already has MoE-LoRA layers")
    pattern = re.compile(config.target_modules)
    targets = [(name, module) for name, module in model.named_modules() if pattern.fullmatch(name)]
    if not targets:
        raise ValueError(f"no module of {type(model).__name__} matches target_modules {config.target_modules!r}")
    model.requires_grad_(False)
    for name, base in targets:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"MoE-LoRA adapts nn.Linear layers; {name} is a {type(base).__name__}")
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, MoeLoraLinear(
            base, config.num_experts, config.expert_rank, config.alpha, config.dropout, config.top_k,
            config.routing, len(config.tasks), config.aux_loss_coef))
    for name in config.modules_to_save:
        model.get_submodule(name).requires_grad_(True)
    for layer in moe_layers(model):
        for parameter_name, parameter in layer.named_parameters():
            parameter.requires_grad_(not parameter_name.startswith("base_layer."))
    setattr(model, CONFIG_ATTRIBUTE, config)
    return model


def moe_layers(model: nn.Module) -> Iterator[MoeLoraLinear]:
    """Every MoE-LoRA layer of ``model`` (through DDP or other wrappers)."""
    return (module for module in model.modules() if isinstance(module, MoeLoraLinear))


def find_moe_lora_config(model: nn.Module) -> Optional[MoeLoraConfig]:
    """The config :func:`inject_moe_lora` attached to ``model`` or a module inside a wrapper; None if none."""
    for module in model.modules():
        config = getattr(module, CONFIG_ATTRIBUTE, None)
        if isinstance(config, MoeLoraConfig):
            return config
    return None


def moe_lora_config(model: nn.Module) -> MoeLoraConfig:
    config = find_moe_lora_config(model)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no MoE-LoRA layers (inject_moe_lora was not applied)")
    return config


def moe_state_dict(model: nn.Module, whole: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """What a MoE-LoRA checkpoint holds: experts, routers / task gates, and the modules saved whole.

    ``whole`` is the model's state gathered from a sharded model; the tensors are then taken from it.
    """
    config = moe_lora_config(model)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, MoeLoraLinear):
            state.update({f"{name}.{key}": value for key, value in module.state_dict().items()
                          if not key.startswith("base_layer.")})
    for name in config.modules_to_save:
        state.update({f"{name}.{key}": value for key, value in model.get_submodule(name).state_dict().items()})
    if whole is not None:
        state = {key: whole[key] for key in state}
    return {key: value.detach() for key, value in state.items()}


def save_moe_lora(model: nn.Module, directory: Path, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Write ``adapter_model.safetensors`` and ``moe_lora_config.json`` into ``directory`` (no pickle)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous().cpu() for key, value in moe_state_dict(model, state_dict).items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    moe_lora_config(model).save(directory)


def load_moe_lora(base_model: nn.Module, directory: Path) -> nn.Module:
    """``base_model`` with the MoE-LoRA adapter saved in ``directory`` injected and loaded."""
    model = inject_moe_lora(base_model, MoeLoraConfig.load(Path(directory)))
    load_moe_lora_weights(model, directory)
    return model


def load_moe_lora_weights(model: nn.Module, directory: Path) -> None:
    """Load the adapter weights saved in ``directory`` into a model that already has MoE-LoRA injected."""
    path = Path(directory) / WEIGHTS_FILE
    device = next(model.parameters()).device
    weights = load_file(str(path), device=str(device))
    expected = set(moe_state_dict(model))
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(weights, strict=False)


def set_task_ids(model: nn.Module, task_ids: Optional[torch.Tensor]) -> None:
    """Give every MoE-LoRA layer the task index of each row of the next inputs (see ``MoeLoraLinear``)."""
    layers = list(moe_layers(model))
    if task_ids is not None and layers:  # one copy to the device for all layers
        task_ids = torch.as_tensor(task_ids, dtype=torch.long).to(layers[0].lora_A.weight.device)
    for layer in layers:
        layer.set_task_ids(task_ids)


def task_ids(model: nn.Module, tasks: Sequence[str]) -> torch.Tensor:
    """Task names → gate indices of ``model``'s adapter; -1 for names it was not trained with."""
    index = {name: i for i, name in enumerate(moe_lora_config(model).tasks)}
    return torch.tensor([index.get(name, -1) for name in tasks], dtype=torch.long)


def aux_loss(model: nn.Module, coef: Optional[float] = None) -> Optional[torch.Tensor]:
    """``coef`` × the sum of the load-balancing losses the layers stored in their last training forward.

    Detached: the value to add to the logged loss. Its gradient already reached the routers through each
    layer's output (``MoeLoraLinear``), so adding it to the objective changes no gradient.

    ``coef`` None = the adapter config's ``aux_loss_coef``. None when the coefficient is 0 or no layer has a
    loss (no training forward yet).
    """
    coef = moe_lora_config(model).aux_loss_coef if coef is None else coef
    losses = [layer.aux_loss for layer in moe_layers(model) if layer.aux_loss is not None]
    if not coef or not losses:
        return None
    return coef * torch.stack(losses).sum()


def merge_moe_lora(model: nn.Module, task: Optional[str] = None) -> nn.Module:
    """``model`` as a plain transformers model, ``task``'s gate-weighted experts folded into each base weight.

    Only task routing can be merged: each layer becomes ``W + scaling * B diag(g ⊗ 1_r) A`` with the task's
    gates ``g``; ``task`` None folds in the mean gates, what the adapted model uses for an unknown task.
    Token routing depends on each input and raises ValueError. Modifies ``model`` in place.
    """
    config = moe_lora_config(model)
    if config.routing is not Routing.task:
        raise ValueError("token-routed MoE-LoRA cannot be merged into plain weights: its expert weights depend "
                         "on each input token; serve the adapted model instead")
    if task is not None and task not in config.tasks:
        raise ValueError(f"unknown task {task!r}; the adapter was trained for {config.tasks}")
    task_index = None if task is None else config.tasks.index(task)
    for name, layer in [(name, module) for name, module in model.named_modules()
                        if isinstance(module, MoeLoraLinear)]:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, layer.merge(task_index))
    for module in model.modules():
        if isinstance(getattr(module, CONFIG_ATTRIBUTE, None), MoeLoraConfig):
            delattr(module, CONFIG_ATTRIBUTE)
    return model

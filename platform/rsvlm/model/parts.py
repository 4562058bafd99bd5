"""The three parts of a LLaVA-style model that strategies train differently."""

from __future__ import annotations

from torch import nn

PARTS = ("vision_tower", "projector", "llm")


def model_parts(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """Qualified module names and modules of each part: vision tower, projector, LLM (lm_head included).

    Works on the bare model and under peft / DDP wrappers, by finding the parts by identity rather than by
    name-sniffing: only the attribute names of transformers' LLaVA-family classes are assumed.
    """
    top = inner_model(model)
    core = top.model
    wanted = {
        "vision_tower": [core.vision_tower],
        "projector": [core.multi_modal_projector],
        "llm": [core.language_model, top.lm_head],
    }
    names = {id(module): name for name, module in model.named_modules()}
    return {part: [(names[id(m)], m) for m in modules] for part, modules in wanted.items()}


def part_of_parameter(model: nn.Module) -> dict[str, str]:
    """Map every parameter name of ``model`` to the part it belongs to."""
    owner = {}
    for part, modules in model_parts(model).items():
        for prefix, module in modules:
            for name, _ in module.named_parameters():
                owner[f"{prefix}.{name}" if prefix else name] = part
    return owner


def trainable_parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{part: {"trainable": n, "total": n}}`` for vision tower, projector and LLM (adapters count to their part)."""
    owner = part_of_parameter(model)
    counts = {part: {"trainable": 0, "total": 0} for part in PARTS}
    for name, parameter in model.named_parameters():
        part = owner.get(name)
        if part is None:
            continue
        counts[part]["total"] += parameter.numel()
        if parameter.requires_grad:
            counts[part]["trainable"] += parameter.numel()
    return counts


def inner_model(model: nn.Module) -> nn.Module:
    """The transformers ``…ForConditionalGeneration`` inside any wrapper (DDP, peft, FSDP).

    Looks at registered submodules only: peft forwards unknown attributes, so attribute walks go astray.
    """
    for module in model.modules():
        inner = module._modules.get("model")
        if "lm_head" in module._modules and inner is not None and "multi_modal_projector" in inner._modules:
            return module
    raise TypeError(f"{type(model).__name__} is not a LLaVA-style model (no lm_head + model.multi_modal_projector)")

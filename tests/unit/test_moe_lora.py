"""MoE-LoRA: the batched layer matches LoRA and a per-expert loop, routes as configured, balances, and its
checkpoints round-trip and merge."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from safetensors import safe_open
from torch import nn

from rsvlm.config import compose
from rsvlm.config.strategy import Routing
from rsvlm.model.build import load_model
from rsvlm.model.parts import trainable_parameter_counts
from rsvlm.strategies import build_strategy
from rsvlm.strategies.checkpoint import load_checkpoint, save_checkpoint
from rsvlm.strategies.moe_lora import (
    MoeLoraConfig,
    MoeLoraLinear,
    aux_loss,
    inject_moe_lora,
    load_balancing_loss,
    merge_moe_lora,
    moe_layers,
    set_task_ids,
)

TASKS = ["caption", "grounding", "vqa"]


def layer(num_experts=4, rank=2, top_k=None, routing=Routing.token, num_tasks=0, in_features=16,
          out_features=12, seed=0, random_b=True):
    """A MoE-LoRA layer on a random base linear layer, B made non-zero so the adapter path matters."""
    torch.manual_seed(seed)
    moe = MoeLoraLinear(nn.Linear(in_features, out_features), num_experts, rank, alpha=2.0 * rank, dropout=0.0,
                        top_k=top_k, routing=routing, num_tasks=num_tasks)
    if random_b:
        with torch.no_grad():
            moe.lora_B.weight.normal_(0, 0.5)
            if routing is Routing.task:
                moe.task_gates.normal_(0, 1.0)
    return moe


def loop_reference(moe: MoeLoraLinear, x: torch.Tensor) -> torch.Tensor:
    """The published form: softmax gate, then a Python loop over experts, each its own A and B."""
    r = moe.expert_rank
    if moe.routing is Routing.token:
        probs = torch.softmax(x @ moe.router.weight.T, dim=-1)
    else:
        probs = torch.softmax(moe.task_gates, dim=-1)[moe.task_ids][:, None, :]
    if moe.top_k is not None:
        values, index = probs.topk(moe.top_k, dim=-1)
        probs = torch.zeros_like(probs).scatter(-1, index, values / values.sum(-1, keepdim=True))
    out = moe.base_layer(x)
    for e in range(moe.num_experts):
        a, b = moe.lora_A.weight[e * r:(e + 1) * r], moe.lora_B.weight[:, e * r:(e + 1) * r]
        out = out + moe.scaling * probs[..., e:e + 1] * (x @ a.T @ b.T)
    return out


# ---- the layer ----------------------------------------------------------------------------------------------

def test_starts_equal_to_the_base_layer():
    moe = layer(random_b=False)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(moe(x), moe.base_layer(x))


def test_one_expert_equals_lora_with_the_same_weights():
    from peft import LoraConfig, get_peft_model

    moe = layer(num_experts=1, rank=4)
    base = nn.Sequential(OrderedDict(proj=copy.deepcopy(moe.base_layer)))
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8.0, lora_dropout=0.0, target_modules=["proj"]))
    proj = lora.base_model.model.proj
    with torch.no_grad():
        proj.lora_A["default"].weight.copy_(moe.lora_A.weight)
        proj.lora_B["default"].weight.copy_(moe.lora_B.weight)
    assert proj.scaling["default"] == moe.scaling == 2.0
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(moe(x), lora(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k", [None, 1, 2, 4])
@pytest.mark.parametrize("routing", [Routing.token, Routing.task])
def test_batched_forward_equals_a_loop_over_experts(top_k, routing):
    moe = layer(num_experts=4, rank=3, top_k=top_k, routing=routing, num_tasks=len(TASKS))
    x = torch.randn(3, 5, 16)
    if routing is Routing.task:
        moe.set_task_ids(torch.tensor([2, 0, 1]))
    torch.testing.assert_close(moe(x), loop_reference(moe, x), atol=1e-5, rtol=1e-5)


def test_top_k_masks_and_renormalises():
    x = torch.randn(4, 6, 16)
    probs, weights = layer(num_experts=4, top_k=2).route(x)
    assert ((weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 6))
    kept = weights > 0
    # The kept experts are the two most probable, in the same proportion as their probabilities.
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, probs.topk(2, -1).indices, True))
    torch.testing.assert_close(weights, torch.where(kept, probs, 0) / (probs * kept).sum(-1, keepdim=True))
    dense_probs, dense = layer(num_experts=4).route(x)
    assert ((dense > 0).sum(-1) == 4).all()
    torch.testing.assert_close(dense, dense_probs)
    torch.testing.assert_close(dense.sum(-1), torch.ones(4, 6))


def test_gradients_reach_the_router_and_every_selected_expert():
    moe = layer(num_experts=4, rank=2, top_k=2)
    x = torch.randn(1, 3, 16)  # three tokens pick at most six of the (expert, token) slots
    _, weights = moe.route(x)
    selected = (weights > 0).reshape(-1, 4).any(0)
    moe(x).pow(2).sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0
    for e in range(4):
        a_grad = moe.lora_A.weight.grad[e * 2:(e + 1) * 2].abs().sum()
        b_grad = moe.lora_B.weight.grad[:, e * 2:(e + 1) * 2].abs().sum()
        if selected[e]:
            assert a_grad > 0 and b_grad > 0, e
        else:  # an expert no token picked gets nothing
            assert a_grad == 0 and b_grad == 0, e
    assert moe.base_layer.weight.grad is not None  # a bare layer; inject_moe_lora is what freezes the base


def test_gradients_reach_the_task_gates_of_the_batch():
    moe = layer(num_experts=3, rank=2, routing=Routing.task, num_tasks=3)
    moe.set_task_ids(torch.tensor([0, 2]))
    moe(torch.randn(2, 4, 16)).pow(2).sum().backward()
    grad = moe.task_gates.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert grad[1].abs().sum() == 0  # task 1 was not in the batch
    assert moe.lora_A.weight.grad.abs().sum() > 0 and moe.lora_B.weight.grad.abs().sum() > 0


def test_unknown_task_uses_the_mean_of_the_task_gates():
    moe = layer(num_experts=3, rank=2, routing=Routing.task, num_tasks=3)
    x = torch.randn(2, 4, 16)
    moe.set_task_ids(torch.tensor([-1, 1]))
    unknown_row = moe(x)[0]
    moe.set_task_ids(None)
    torch.testing.assert_close(moe(x)[0], unknown_row)
    mean_gate = torch.softmax(moe.task_gates, -1).mean(0)
    torch.testing.assert_close(moe.task_gate_weights()[-1], mean_gate)
    with pytest.raises(ValueError, match="rows"):
        moe.set_task_ids(torch.tensor([0, 1, 2]))
        moe(x)


# ---- load balancing -----------------------------------------------------------------------------------------

def test_aux_loss_is_smallest_for_uniform_routing():
    experts = 4
    uniform = torch.full((64, experts), 1 / experts)
    assert load_balancing_loss(uniform, uniform, None).item() == pytest.approx(1.0)
    skewed = torch.softmax(torch.tensor([3.0, 0.0, 0.0, 0.0]).expand(64, experts), -1)
    assert load_balancing_loss(skewed, skewed, None).item() > 1.5
    # Dense: E * sum(P^2) >= 1 for any routing.
    for seed in range(20):
        probs = torch.softmax(3 * torch.randn(64, experts, generator=torch.Generator().manual_seed(seed)), -1)
        assert load_balancing_loss(probs, probs, None).item() >= 1.0 - 1e-6

    # Top-2: each token prefers a different pair, so selections and probabilities are spread evenly.
    from rsvlm.strategies.moe_lora import top_k_weights

    logits = torch.zeros(64, experts)
    for token in range(64):
        logits[token, token % experts] = logits[token, (token + 1) % experts] = 2.0
    balanced = torch.softmax(logits, -1)
    assert load_balancing_loss(balanced, top_k_weights(balanced, 2), 2).item() == pytest.approx(1.0)
    assert load_balancing_loss(skewed, top_k_weights(skewed, 2), 2).item() > 1.5


def test_layers_store_their_aux_loss_and_the_model_sums_them():
    stack = nn.Sequential(OrderedDict(first=nn.Linear(16, 16), second=nn.Linear(16, 16)))
    config = MoeLoraConfig(num_experts=4, expert_rank=2, alpha=4.0, target_modules=r"first|second",
                           aux_loss_coef=0.5)
    inject_moe_lora(stack, config)
    layers = list(moe_layers(stack))
    with torch.no_grad():
        for moe in layers:
            moe.router.weight.zero_()  # uniform routing: each layer's loss is at its minimum, 1
    stack.train()(torch.randn(2, 3, 16))
    assert all(moe.aux_loss.item() == pytest.approx(1.0) for moe in layers)
    assert aux_loss(stack).item() == pytest.approx(0.5 * 2)
    assert aux_loss(stack, 0.0) is None
    stack.eval()(torch.randn(2, 3, 16))
    assert aux_loss(stack) is None  # evaluation stores none


def test_aux_loss_gradient_reaches_the_router_through_the_output_without_a_stored_graph():
    """The layer adds coef × d(balance)/d(router) in the backward pass; what it stores has no graph."""
    moe = layer(random_b=False)  # B = 0: the output carries no gradient to the router but the aux loss's
    moe.aux_loss_coef = 0.3
    x = torch.randn(2, 5, 16)
    moe.train()(x).sum().backward()
    assert moe.aux_loss.grad_fn is None and not moe.aux_loss.requires_grad
    through_output = moe.router.weight.grad.clone()
    moe.router.weight.grad = None
    probs, weights = moe.route(x)
    (0.3 * load_balancing_loss(probs, weights, moe.top_k)).backward()
    torch.testing.assert_close(through_output, moe.router.weight.grad)
    assert through_output.abs().sum() > 0


def test_checkpointing_a_moe_layer_gives_the_same_gradients():
    from torch.utils.checkpoint import checkpoint

    grads = []
    for checkpointed in (False, True):
        moe = layer(top_k=2)
        moe.aux_loss_coef = 0.1
        x = torch.randn(2, 5, 16)
        out = checkpoint(moe, x, use_reentrant=False) if checkpointed else moe.train()(x)
        out.pow(2).sum().backward()
        grads.append([p.grad.clone() for p in (moe.router.weight, moe.lora_A.weight, moe.lora_B.weight)])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)


# ---- the tiny LLaVA -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    job = compose([f"workdir={tmp_path_factory.mktemp('w')}", "strategy=moe_lora", "strategy.rank=8",
                   "strategy.alpha=16"])
    return job, load_model(job.model)


def moe_job(base, *overrides):
    job, _ = base
    return compose([f"workdir={job.workdir}", "strategy=moe_lora", "strategy.rank=8", "strategy.alpha=16",
                    *overrides])


def fresh(base):
    """A copy of the untrained tiny model (building one trains its tokenizer, which takes seconds)."""
    return copy.deepcopy(base[1].model)


def batch(loaded, rows=2, seed=0):
    """``rows`` image-text samples with an answer, built through the real template code."""
    from rsvlm.data.template import VICUNA_V1, tokenize_conversation

    turns = [{"from": "human", "value": "<image>\nIs there a ship in the image?"}, {"from": "gpt", "value": "yes"}]
    sample = tokenize_conversation(turns, loaded.tokenizer, VICUNA_V1, loaded.image_token_count, 256)
    generator = torch.Generator().manual_seed(seed)
    size = loaded.model.config.vision_config.image_size
    return {"input_ids": torch.tensor([sample.input_ids] * rows), "labels": torch.tensor([sample.labels] * rows),
            "attention_mask": torch.ones(rows, len(sample.input_ids), dtype=torch.long),
            "pixel_values": torch.randn(rows, 3, size, size, generator=generator)}


def perturb(model, scale=0.05, seed=0):
    """Make the trainable weights differ from a fresh adapter's (B leaves zero, gates leave uniform)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
        for moe in moe_layers(model):
            if moe.routing is Routing.task:
                moe.task_gates.normal_(0, 2.0, generator=generator)


def test_inject_trains_adapters_routers_and_projector_only(base):
    job = moe_job(base, "strategy.num_experts=2")
    loaded = base[1]
    inputs = batch(loaded)
    expected = loaded.model.eval()(**inputs).logits
    model = build_strategy(job.strategy).apply(fresh(base))
    counts = trainable_parameter_counts(model)
    assert counts["vision_tower"]["trainable"] == 0 and counts["projector"]["trainable"] > 0
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    llm = [name for name in trainable if "language_model" in name or "lm_head" in name]
    assert llm and all(name.rsplit(".", 2)[-2] in {"lora_A", "lora_B", "router"} for name in llm)
    # Every linear layer of the LLM but lm_head is adapted, as LoRA does.
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, MoeLoraLinear)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any(isinstance(m, MoeLoraLinear) for m in model.model.vision_tower.modules())
    torch.testing.assert_close(model.eval()(**inputs).logits, expected)


@pytest.mark.parametrize("overrides", [["strategy.top_k=2"], ["strategy.routing=task", f"strategy.tasks={TASKS}"]],
                         ids=["token-top2", "task"])
def test_checkpoint_round_trip_is_exact_and_safetensors_only(base, tmp_path, overrides):
    job = moe_job(base, *overrides)
    loaded = base[1]
    strategy = build_strategy(job.strategy)
    model = strategy.apply(fresh(base))
    perturb(model)
    inputs = batch(loaded)
    strategy.set_batch_tasks(model, ["vqa", "caption"])
    expected = model.eval()(**inputs).logits

    strategy.save(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_model.safetensors",
                                                                        "moe_lora_config.json"]
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert any("multi_modal_projector" in key for key in keys)
    assert any(key.endswith("router.weight" if job.strategy.routing is Routing.token else "task_gates")
               for key in keys)
    assert not any("base_layer" in key or "vision_tower" in key for key in keys)

    save_checkpoint(tmp_path / "ckpt", model, loaded.processor, job, {"step": 1})
    files = [p for p in (tmp_path / "ckpt").rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}]
    restored = load_checkpoint(tmp_path / "ckpt").model
    build_strategy(job.strategy).set_batch_tasks(restored, ["vqa", "caption"])
    torch.testing.assert_close(restored(**inputs).logits, expected, atol=0, rtol=0)


def test_task_routing_depends_on_the_task_and_merges_per_task(base):
    job = moe_job(base, "strategy.routing=task", f"strategy.tasks={TASKS}", "strategy.top_k=2")
    loaded = base[1]
    strategy = build_strategy(job.strategy)
    model = strategy.apply(fresh(base))
    perturb(model)
    model.eval()
    inputs = batch(loaded, rows=1)
    logits = {}
    for task in ["vqa", "caption", "not-a-task"]:
        strategy.set_batch_tasks(model, [task])
        logits[task] = model(**inputs).logits
    assert not torch.allclose(logits["vqa"], logits["caption"], atol=1e-3)
    for task, expected in [("vqa", logits["vqa"]), (None, logits["not-a-task"])]:
        adapted = copy.deepcopy(model)
        merged = strategy.merge(adapted, task)
        assert type(merged).__name__ == "LlavaForConditionalGeneration"
        assert not list(moe_layers(merged)) and not hasattr(merged, "moe_lora_config")
        assert set(merged.state_dict()) == set(loaded.model.state_dict())
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown task"):
        strategy.merge(copy.deepcopy(model), "segmentation")


def test_token_routing_cannot_be_merged(base):
    job = moe_job(base)
    model = build_strategy(job.strategy).apply(fresh(base))
    with pytest.raises(ValueError, match="token"):
        build_strategy(job.strategy).merge(model)
    with pytest.raises(ValueError, match="token"):
        merge_moe_lora(model, "vqa")


def test_set_batch_tasks_maps_names_to_gates(base):
    job = moe_job(base, "strategy.routing=task", f"strategy.tasks={TASKS}")
    strategy = build_strategy(job.strategy)
    model = strategy.apply(fresh(base))
    strategy.set_batch_tasks(model, ["vqa", "", "caption"])
    assert all(moe.task_ids.tolist() == [2, -1, 0] for moe in moe_layers(model))
    set_task_ids(model, None)
    token = build_strategy(moe_job(base).strategy)
    token_model = token.apply(fresh(base))
    token.set_batch_tasks(token_model, ["vqa"])  # token routing ignores tasks
    assert all(moe.task_ids is None for moe in moe_layers(token_model))


def test_rank_split_and_scaling(base):
    total = MoeLoraConfig.from_strategy(moe_job(base, "strategy.num_experts=4").strategy, fresh(base))
    assert (total.expert_rank, total.scaling) == (2, 8.0)
    per_expert = MoeLoraConfig.from_strategy(
        moe_job(base, "strategy.num_experts=4", "strategy.rank_split=per_expert").strategy, fresh(base))
    assert (per_expert.expert_rank, per_expert.scaling) == (8, 2.0)
    assert MoeLoraConfig.from_dict(per_expert.to_dict()) == per_expert
    with pytest.raises(ValueError, match="routing=task"):
        MoeLoraConfig.from_strategy(moe_job(base, "strategy.routing=task").strategy, fresh(base))
    with pytest.raises(ValueError, match="target_modules"):
        MoeLoraConfig.from_strategy(moe_job(base, "strategy.target_modules=[nope]").strategy, fresh(base))


def test_lora_and_full_accept_tasks_and_ignore_them(base):
    job, _ = base
    for overrides in (["strategy=lora", "strategy.rank=4"], ["strategy=full"]):
        strategy = build_strategy(compose([f"workdir={job.workdir}", *overrides]).strategy)
        model = strategy.apply(fresh(base))
        strategy.set_batch_tasks(model, ["vqa"])
        assert type(strategy.merge(model, "vqa")).__name__ == "LlavaForConditionalGeneration"

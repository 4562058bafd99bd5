"""Every strategy fine-tunes end to end in Ray Train's local mode and its checkpoint loads back by itself."""

from __future__ import annotations

import json
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from rsvlm.data.prepare import prepare_dataset, read_manifest
from rsvlm.strategies import build_strategy
from rsvlm.strategies.checkpoint import checkpoint_configs, load_checkpoint
from rsvlm.train.finetune import run_finetune

SMALL = ["data.synthetic.num_train_images=16", "data.synthetic.num_test_images=2", "scaling=local",
         "train.max_steps=5", "train.log_every=5", "strategy.rank=8", "strategy.alpha=16"]

# name → (overrides, tracking on: the MoE runs log their aux loss to MLflow, the others skip the database)
STRATEGIES = {
    "full": (["strategy=full"], False),
    "lora": (["strategy=lora"], False),
    "moe_lora_token": (["strategy=moe_lora"], True),
    "moe_lora_task": (["strategy=moe_lora", "strategy.routing=task"], True),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One prepared synthetic dataset that every strategy trains on."""
    from rsvlm.config import compose

    workdir = tmp_path_factory.mktemp("strategies")
    prepare_dataset(compose([f"workdir={workdir}", *SMALL]).data)
    return workdir


def sample(loaded):
    """One image-question-answer sample shaped as the model's inputs."""
    from rsvlm.data.template import VICUNA_V1, tokenize_conversation

    turns = [{"from": "human", "value": "<image>\nHow many ships are there?"}, {"from": "gpt", "value": "2"}]
    tokens = tokenize_conversation(turns, loaded.tokenizer, VICUNA_V1, loaded.image_token_count, 256)
    size = loaded.model.config.vision_config.image_size
    return {"input_ids": torch.tensor([tokens.input_ids]), "labels": torch.tensor([tokens.labels]),
            "attention_mask": torch.ones(1, len(tokens.input_ids), dtype=torch.long),
            "pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_finetunes_and_its_checkpoint_loads(name, workdir, local_ray):
    from rsvlm.config import compose

    overrides, tracked = STRATEGIES[name]
    job = compose([f"workdir={workdir}", *SMALL, *overrides, f"train.run_name=strategies-{name}",
                   f"tracking={'local' if tracked else 'off'}"])
    result = run_finetune(job)
    assert math.isfinite(result.metrics["train/loss"]) and result.metrics["step"] == 5

    checkpoint = result.checkpoint_path
    spec = json.loads((checkpoint / "strategy.json").read_text())
    assert spec["name"] == job.strategy.name.value
    assert not [p for p in checkpoint.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    strategy, _ = checkpoint_configs(checkpoint)
    loaded = load_checkpoint(checkpoint)
    inputs = sample(loaded)
    if name == "moe_lora_task":
        # finetune filled the gate order from the prepared dataset's tasks, and the checkpoint kept it.
        tasks = sorted(read_manifest(job.data.uri)["by_task"])
        assert len(tasks) > 1 and strategy.tasks == tasks
        assert json.loads((checkpoint / "moe_lora_config.json").read_text())["tasks"] == tasks
        # Each task's gates trained on its own rows (rows of unknown tasks would all move alike).
        from rsvlm.strategies.moe_lora import moe_layers

        gates = next(moe_layers(loaded.model)).task_gates
        assert not torch.allclose(gates[0], gates[1])
        build_strategy(strategy).set_batch_tasks(loaded.model, [tasks[0]])
    with torch.no_grad():
        logits = loaded.model(**inputs).logits
    assert torch.isfinite(logits).all()

    if tracked:
        client = MlflowClient(tracking_uri=job.tracking.uri)
        run = client.get_run(result.run_id)
        assert run.data.params["strategy.name"] == "moe_lora"
        aux = client.get_metric_history(result.run_id, "train/aux_loss")
        # A sum over the adapted layers of losses that are >= 1 at their best, times the coefficient.
        assert aux and all(math.isfinite(m.value) and m.value > 0 for m in aux)


def test_full_fine_tuning_shards_with_fsdp_across_two_workers(tmp_path, local_ray):
    """FSDP2 over gloo on two CPU workers: trains, gathers the shards and saves one loadable model."""
    from rsvlm.config import compose
    from rsvlm.model.build import load_model
    from support import llava_batch

    job = compose([f"workdir={tmp_path}", "data.synthetic.num_train_images=16", "data.synthetic.num_test_images=2",
                   "strategy=full", "scaling=cpu2", "scaling.sharding=fsdp", "tracking=off", "train.max_steps=3",
                   "train.log_every=3"])
    prepare_dataset(job.data)
    result = run_finetune(job)
    assert result.metrics["world_size"] == 2 and result.metrics["sharded"] is True
    assert math.isfinite(result.metrics["train/loss"])
    trained = load_checkpoint(result.checkpoint_path)
    base = load_model(job.model)
    names = [n for n, _ in base.model.named_parameters() if ".layers.0." in n and "language_model" in n]
    changed = [n for n in names if not torch.equal(dict(base.model.named_parameters())[n],
                                                   dict(trained.model.named_parameters())[n])]
    assert changed, "the gathered checkpoint holds the base weights: the shards were not saved"
    logits = trained.model(**llava_batch(trained)).logits
    assert torch.isfinite(logits).all()


def test_fsdp_is_refused_for_adapter_strategies(tmp_path):
    from rsvlm.config import ConfigError, compose

    with pytest.raises(ConfigError, match="scaling.sharding"):
        compose([f"workdir={tmp_path}", "strategy=lora", "scaling.sharding=fsdp"])

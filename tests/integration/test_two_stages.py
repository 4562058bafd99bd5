"""LLaVA's two stages through the real jobs' library calls (local Ray Train): stage 1 (align) trains the tiny
model's vision tower and projector on captions; stage 2 (LoRA) starts from its weights, and its checkpoint,
export and evaluation carry them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rsvlm.config import compose
from rsvlm.data.prepare import prepare_dataset
from rsvlm.errors import JobError
from rsvlm.model.build import load_model
from rsvlm.model.parts import model_parts
from rsvlm.strategies.checkpoint import init_weights, load_checkpoint
from rsvlm.strategies.export import export_merged
from rsvlm.train.finetune import run_finetune
from rsvlm.train.stages import alignment_job, instruction_job
from support import llava_batch

RUN = ["data.synthetic.num_train_images=16", "data.synthetic.num_test_images=2", "scaling=local",
       "strategy.rank=8", "strategy.alpha=16", "train.log_every=1", "train.val_batches=0", "align.max_steps=3",
       "tracking.system_metrics_interval_s=0"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory, local_ray):
    workdir = tmp_path_factory.mktemp("two-stages")
    job = compose([f"workdir={workdir}", *RUN])
    prepare_dataset(job.data)
    aligned = run_finetune(alignment_job(job))
    # Stage 2 at a learning rate that cannot move the weights: what it holds is what it started from.
    still = compose([f"workdir={workdir}", *RUN, "train.max_steps=1", "optim.lr=1e-12"])
    tuned = run_finetune(instruction_job(still, aligned.checkpoint_uri))
    return job, aligned, tuned


def _part_state(model, part: str) -> dict[str, torch.Tensor]:
    (prefix, module), = model_parts(model)[part][:1]
    return {f"{prefix}.{key}": value for key, value in module.state_dict().items()}


def test_stage_one_saves_only_the_parts_it_trained(stages):
    job, aligned, _ = stages
    assert aligned.registered_model == "rsvlm-tiny-align" and aligned.metrics["step"] == 3
    parts = load_file(str(aligned.checkpoint_path / "aligned_parts.safetensors"))
    base = load_model(job.model).model
    # The tiny model is random throughout, so its stage 1 trains every part (align.vision_tower/llm: auto).
    whole = base.state_dict()
    assert parts.keys() == whole.keys()
    trained = [key for key, value in parts.items() if not torch.equal(value, whole[key])]
    for part in ("multi_modal_projector", "vision_tower", "language_model"):
        assert any(part in key for key in trained), part


def test_stage_two_starts_from_stage_one_and_its_checkpoint_carries_the_weights(stages):
    job, aligned, tuned = stages
    stage1 = init_weights(aligned.checkpoint_path)
    carried = load_file(str(tuned.checkpoint_path / "init_weights.safetensors"))
    assert carried.keys() == stage1.keys() and all(torch.equal(carried[k], stage1[k]) for k in stage1)
    restored = load_checkpoint(tuned.checkpoint_path).model
    # The vision tower is frozen in stage 2: exactly stage 1's. The projector trains, at an lr that cannot move it.
    for key, value in _part_state(restored, "vision_tower").items():
        assert torch.equal(value, stage1[key.removeprefix("base_model.model.")]), key
    for key, value in _part_state(restored, "projector").items():
        # peft keeps the projector it started from (original_module) beside the one it trains (modules_to_save).
        original = (key.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
                    .replace(".original_module", ""))
        torch.testing.assert_close(value, stage1[original], atol=1e-6, rtol=0)
    untrained = _part_state(load_model(job.model).model, "projector")
    assert any(not torch.equal(untrained[key], stage1[key]) for key in untrained)


def test_the_export_of_a_stage_two_model_is_the_whole_model(stages, tmp_path):
    from transformers import AutoModelForImageTextToText

    _, aligned, tuned = stages
    restored = load_checkpoint(tuned.checkpoint_path)
    exported = AutoModelForImageTextToText.from_pretrained(export_merged(tuned.checkpoint_path, tmp_path / "out"))
    stage1 = init_weights(aligned.checkpoint_path)
    for key, value in _part_state(exported, "vision_tower").items():
        assert torch.equal(value, stage1[key]), key
    inputs = llava_batch(restored)
    torch.testing.assert_close(exported.eval()(**inputs).logits, restored.model(**inputs).logits,
                               atol=1e-4, rtol=1e-4)


def test_init_from_takes_only_a_stage_one_checkpoint(stages, tmp_path):
    _, _, tuned = stages
    with pytest.raises(JobError, match=r"model.init_from=.*: a 'lora' checkpoint, not a stage-1 one"):
        init_weights(tuned.checkpoint_path)
    with pytest.raises(JobError, match="not an rsvlm checkpoint"):
        init_weights(tmp_path)


def test_an_unknown_task_filter_is_refused_before_training(stages):
    job, _, _ = stages
    bad = compose([f"workdir={job.workdir}", *RUN, "data.tasks=[captions]", "train.run_name=bad-tasks"])
    with pytest.raises(JobError, match=r"data.tasks=\['captions'\]: .* has no record of task\(s\) \['captions'\]"):
        run_finetune(bad)
    assert not (Path(bad.train.storage_uri) / "bad-tasks" / "rsvlm_run.json").exists()


def test_stage_one_takes_its_own_micro_batch(tmp_path):
    # A random tiny model learns to read the image far sooner in large batches (docs/PERFORMANCE.md); stage 2
    # keeps its own batch settings.
    common = [f"workdir={tmp_path}", "train.micro_batch_size=4", "train.global_batch_size=8"]
    stage1 = alignment_job(compose([*common, "align.micro_batch_size=16"]))
    assert (stage1.train.micro_batch_size, stage1.train.global_batch_size, stage1.global_batch_size) == (16, None, 16)
    unset = alignment_job(compose([*common, "align.micro_batch_size=null"]))
    assert (unset.train.micro_batch_size, unset.train.global_batch_size) == (4, 8)


def test_stage_one_recipes_compose():
    # align=tiny (the default) is the demo's stage 1; align=llava is LLaVA-1.5's, which experiment=rsgpt4v picks.
    tiny = alignment_job(compose(["workdir=unused"]))
    assert (tiny.data.tasks, tiny.optim.lr, tiny.train.max_steps, tiny.train.micro_batch_size) == (
        ["presence", "caption"], 2e-3, 400, 32)
    assert (tiny.strategy.vision_tower.value, tiny.strategy.llm.value) == ("full", "full")  # a random model
    llava = alignment_job(compose(["workdir=unused", "experiment=rsgpt4v"]))
    assert (llava.data.tasks, llava.optim.lr, llava.optim.weight_decay) == (["caption"], 1e-3, 0.0)
    assert (llava.strategy.vision_tower.value, llava.strategy.projector.value, llava.strategy.llm.value) == (
        "frozen", "full", "frozen")
    assert (llava.train.micro_batch_size, llava.train.global_batch_size) == (4, 64)

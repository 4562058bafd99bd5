"""Does the tiny model read the image? In-process probes of the demo's learning signal (issue 16), no Ray.

Two measurements on a synthetic dataset (written under ``--workdir`` once per seed, size and object scale):

- ``probe``: a linear probe (logistic regression) on the *untrained* model's projected image features,
  fit on the training images: per-category presence accuracy on the test images, against the base rate.
  It says whether the features carry the answer at all.
- ``train``: optional stage 1 (every part, on captions), then ``--strategy`` on ``--tasks`` records for
  ``--steps`` steps, then presence / count / comparison accuracy with greedy answers on the test
  questions, with the true images and with images shuffled across questions (the demo's control).

``--object-scale`` is the generator's ``object_scale`` (1 = its own sizes); ``--categories`` keeps only the
records and questions that name those categories (the toy learning test); ``--set`` passes a config override
to the train mode's model and strategy (``--set model.tiny.text_layers=4``); ``--stage1-*`` shape stage 1;
``--init-from`` starts from a checkpoint folder (``--steps 0``: evaluate it as it is).

    python bench/vision_probe.py --mode probe --train-images 2000
    python bench/vision_probe.py --mode train --steps 600 --tasks presence --strategy full --vision-tower full
    python bench/vision_probe.py --mode train --object-scale 1.6 --steps 600 --tasks presence --strategy full \\
        --vision-tower full --train-images 2000
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from rsvlm.config import compose
from rsvlm.config.model import ImageAspect
from rsvlm.config.strategy import StrategyConfig, StrategyName, Trainability
from rsvlm.data.images import open_rgb, preprocess_images
from rsvlm.data.samples import SampleBuilder, collate
from rsvlm.data.synthetic import CATEGORIES, write_dataset
from rsvlm.data.template import chat_template
from rsvlm.eval.evaluate import shuffled_images
from rsvlm.eval.generate import Prompt, generate_answers
from rsvlm.model.build import load_model
from rsvlm.strategies import build_strategy
from rsvlm.strategies.checkpoint import load_checkpoint
from rsvlm.train.optim import build_optimizer, warmup_cosine
from rsvlm.train.step import train_step


def dataset(args) -> Path:
    root = Path(args.workdir) / f"data_s{args.seed}_n{args.train_images}_x{args.object_scale:g}"
    if not (root / "train.json").exists():
        write_dataset(root, seed=args.seed, num_train_images=args.train_images, num_test_images=args.test_images,
                      image_size=128, object_scale=args.object_scale)
    return root


def probe(args, root: Path) -> dict:
    loaded = load_model(compose([f"workdir={args.workdir}"]).model)
    scenes = json.loads((root / "scenes.json").read_text())["images"]

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = [s for s in scenes if s["split"] == split]
        rows = []
        for start in range(0, len(chosen), 64):
            images = [open_rgb((root / s["image"]).read_bytes()) for s in chosen[start:start + 64]]
            pixels = torch.from_numpy(preprocess_images(images, loaded.processor.image_processor, ImageAspect.pad))
            with torch.no_grad():
                per_image = loaded.model.model.get_image_features(pixel_values=pixels).pooler_output
            rows.append(torch.stack(list(per_image)).reshape(len(images), -1))  # the image tokens, projected
        present = [[any(o["category"] == c for o in s["objects"]) for c in CATEGORIES] for s in chosen]
        return torch.cat(rows), torch.tensor(present, dtype=torch.float32)

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    weights = torch.zeros(x_train.shape[1], len(CATEGORIES), requires_grad=True)
    bias = torch.zeros(len(CATEGORIES), requires_grad=True)
    optimizer = torch.optim.Adam([weights, bias], lr=1e-2)
    for _ in range(500):
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x_train @ weights + bias, y_train)
                + 1e-3 * weights.pow(2).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = ((x_test @ weights + bias > 0).float() == y_test).float().mean(0)
    return {"probe_accuracy": dict(zip(CATEGORIES, map(round, accuracy.tolist(), [3] * 5))),
            "base_rate": dict(zip(CATEGORIES, map(round, y_test.mean(0).tolist(), [3] * 5)))}


def train(args, root: Path) -> dict:
    job = compose([f"workdir={args.workdir}", f"strategy={args.strategy}", "strategy.rank=32", "strategy.alpha=64",
                   f"strategy.vision_tower={args.vision_tower}", f"model.tiny.patch_size={args.patch_size}",
                   *args.set])
    # A checkpoint (a stage-1 one, say) starts from its weights; --steps 0 then only answers with them.
    loaded = load_checkpoint(Path(args.init_from)) if args.init_from else load_model(job.model)
    builder = SampleBuilder(loaded.processor, chat_template(job.model.chat_template), loaded.image_token_count,
                            192, str(root))
    categories = args.categories.split(",") if args.categories else CATEGORIES
    records = [r for r in json.loads((root / "train.json").read_text()) if _mentions(json.dumps(r), categories)]
    random.seed(args.order_seed)  # the order records are drawn in: plateau escapes depend on it

    def fit(model, chosen: list[dict], steps: int, lr: float, batch: int) -> float:
        optimizer = build_optimizer(model, dataclasses.replace(job.optim, lr=lr, weight_decay=0.0))
        schedule = warmup_cosine(optimizer, int(0.05 * steps), steps)
        loss, step = float("nan"), 0
        while step < steps:
            random.shuffle(chosen)
            for start in range(0, len(chosen) - batch + 1, batch):
                lines = np.array([json.dumps(r) for r in chosen[start:start + batch]], dtype=object)
                inputs, _ = collate(builder({"text": lines}), loaded.processor.image_processor)
                if inputs is not None:
                    loss = train_step(model, [(inputs, [])], optimizer, schedule, 1.0)["loss"]
                    step += 1
                if step == steps:
                    break
        return loss

    model, started, figures = loaded.model, time.perf_counter(), {}
    if args.caption_steps:
        every_part = StrategyConfig(name=StrategyName.align, vision_tower=Trainability.full,
                                    projector=Trainability.full, llm=Trainability.full)
        model = build_strategy(every_part).apply(model)
        stage1_tasks = args.stage1_tasks.split(",")
        figures["caption_loss"] = fit(model, [r for r in records if r["task"] in stage1_tasks], args.caption_steps,
                                      args.stage1_lr, args.stage1_batch or args.batch)
        figures["stage1_s"] = round(time.perf_counter() - started, 1)
    if args.steps:
        model = build_strategy(job.strategy).apply(model)
        tasks = args.tasks.split(",")
        figures["train_loss"] = fit(model, [r for r in records if r["task"] in tasks], args.steps, args.lr,
                                    args.batch)
    figures["train_s"] = round(time.perf_counter() - started, 1)
    loaded.model = model
    questions = [json.loads(line) for line in (root / "test_questions.jsonl").read_text().splitlines()]
    for kind in ("presence", "count", "comparison"):
        chosen = [q for q in questions if q["category"] == kind and _mentions(q["text"], categories)]
        if not chosen:
            continue
        images = {q["image"]: open_rgb((root / q["image"]).read_bytes()) for q in chosen}
        for label, asked in (("true", chosen), ("shuffled", shuffled_images(chosen, seed=1))):
            answers = generate_answers(loaded, [Prompt(q["text"], images[q["image"]]) for q in asked],
                                       max_new_tokens=8)
            correct = [a.strip().lower() == q["ground_truth"].strip().lower() for a, q in zip(answers, chosen)]
            figures[f"{kind}_{label}"] = round(float(np.mean(correct)), 3)
            if kind == "presence" and label == "true":
                figures["presence_by_category"] = {c: round(float(np.mean([ok for ok, q in zip(correct, chosen)
                                                                           if c in q["text"]] or [0.0])), 3)
                                                   for c in categories}
    return figures


def _mentions(text: str, categories) -> bool:
    """Whether a record or question names one of ``categories`` (all five: every record)."""
    return len(categories) == len(CATEGORIES) or any(c in text for c in categories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("probe", "train"), default="train")
    parser.add_argument("--workdir", default="/tmp/rsvlm-vision-probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order-seed", type=int, default=0, help="seed of the order records are drawn in")
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--test-images", type=int, default=60)
    parser.add_argument("--object-scale", type=float, default=1.0)
    parser.add_argument("--caption-steps", type=int, default=0, help="stage 1 (every part, on --stage1-tasks) first")
    parser.add_argument("--stage1-tasks", default="caption", help="the records stage 1 trains on")
    parser.add_argument("--stage1-lr", type=float, default=1e-3)
    parser.add_argument("--stage1-batch", type=int, default=0, help="0: --batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--set", action="append", default=[], help="a config override, e.g. model.tiny.text_layers=4")
    parser.add_argument("--steps", type=int, default=600, help="0: no training, answer with the model as loaded")
    parser.add_argument("--init-from", default="", help="a checkpoint folder to start from instead of the base")
    parser.add_argument("--categories", default="", help="only records naming these, e.g. 'ship,tennis court'")
    parser.add_argument("--tasks", default="presence")
    parser.add_argument("--strategy", default="lora", choices=("lora", "full", "moe_lora"))
    parser.add_argument("--vision-tower", default="frozen", choices=("frozen", "full"))
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = dataset(args)
    figures = probe(args, root) if args.mode == "probe" else train(args, root)
    print(json.dumps({"mode": args.mode, **{k: v for k, v in vars(args).items() if k != "workdir"}, **figures}))


if __name__ == "__main__":
    main()

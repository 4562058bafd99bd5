"""Answers/s of greedy generation on the synthetic test split: batched against one question at a time.

    .venv/bin/python bench/generation.py [--preset full|toy] [--questions N] [--max-new-tokens 24]
                                         [--batch-size 16] [--repeats 3]

The data is the synthetic dataset of ``data=synthetic`` (seed 0), prepared once into a temporary workdir;
the questions are its test split (``benchmark=synthetic``: 508 questions on 60 scenes at the ``full``
preset), and the model is the untrained tiny LLaVA (``model_uri=base``). Variants, each in its own process:

- ``sequential``: ``rsvlm.eval.generate.generate_answers`` (what ``jobs/evaluate.py`` generates with) with
  ``batch_size=1``;
- ``batched``: the same function with ``batch_size=--batch-size`` (16, the benchmark's default): prompts
  sorted by length, left padding, one ``generate`` call per batch. In both, each distinct image of the
  call goes through the vision tower and projector once (``batch_size`` images at a time) and ``generate``
  gets the features; the KV cache is transformers' default (``use_cache=True``);
- ``in_process``: ``answer_questions`` with ``benchmark.workers=0``, end to end (model load, image reads);
- ``ray_data``: ``answer_questions`` with ``benchmark.workers=1``, as ``jobs/evaluate.py`` runs it: a Ray
  Data actor pool of one actor that loads the model and answers batches. Ray's start-up (``ensure_ray``,
  i.e. ``ray.init`` of a local cluster) is timed apart as ``ray_init_s``; the actor's start-up (a new
  process importing torch and transformers, then loading the model) is inside ``ray_data_answers_per_s``,
  as it is inside every evaluate job. A second call on the same cluster gives ``ray_data_warm_answers_per_s``.

The two generation variants time only the ``generate_answers`` call over all the questions, with images
decoded beforehand (their preprocessing is inside ``generate_answers``, so inside the timing). After a
warm-up call on the first ``--batch-size`` prompts and one call that records the answers and counts their
tokens, the rate is the median of ``--repeats`` timed calls. The bench fails (exit code 1, after printing
its line) unless the two variants give identical answers. Each timed call is followed by the same call with
``max_new_tokens=1``, which splits the time in two: ``first_token_ms_per_answer`` (tokenisation, image
preprocessing and encoding, the prefill through the LLM, the first token) and
``later_step_ms_per_row`` (each further decoding step of one batch row, on the KV cache).

Why the untrained model and the benchmark's step count: the untrained tiny model almost never emits its
end-of-sequence token; it babbles byte tokens until ``max_new_tokens`` (24, the benchmark's setting), so
nearly every answer runs the same 24 decoding steps in both modes (``mean_new_tokens`` is 23.97 on the
full split). That is what the comparison needs: the same work, batched differently, with no answer of a
batch waiting idle for the longest one. ``mean_new_tokens`` counts, per answer, the tokens ``generate``
returned up to and including the first end-of-sequence token. A trained model stops early on short answers
(yes/no, a count) and a batch runs until its longest answer, so batching gains less per answer there;
``batched_row_steps_per_answer`` against ``mean_new_tokens`` shows that padding when it happens. Training a
model first was not worth its minutes here: the step count, not the weights, sets the cost of a step.

``threads`` is torch's thread count in each variant; for ``ray_data`` it is read in an actor started with
the same ``map_batches`` arguments after the timing (Ray sets ``OMP_NUM_THREADS`` to the actor's CPUs).
Prints one JSON line with ``batched_over_sequential`` (batched answers/s over sequential answers/s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from _common import every_variant  # noqa: E402  (bench/ is the script's folder)

VARIANTS = ("sequential", "batched", "in_process", "ray_data")
PRESETS = {
    # The benchmark as evaluate runs it: the whole test split of data=synthetic, 24 new tokens, batches of 16.
    "full": dict(questions=None, max_new_tokens=24, batch_size=16, repeats=3, overrides=[]),
    # A few questions on a few small scenes: the test's size.
    "toy": dict(questions=24, max_new_tokens=4, batch_size=8, repeats=1,
                overrides=["data.synthetic.num_train_images=4", "data.synthetic.num_test_images=4",
                           "data.synthetic.image_size=64"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--questions", type=int, help="answer only the first N questions (default: the preset's)")
    parser.add_argument("--max-new-tokens", type=int, help="benchmark.max_new_tokens (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="the batched variant's batch (default: the preset's)")
    parser.add_argument("--repeats", type=int, help="timed calls per generation variant, median reported "
                        "(default: the preset's)")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    parser.add_argument("--workdir", help=argparse.SUPPRESS)  # the prepared data (used internally)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    for key in ("questions", "max_new_tokens", "batch_size", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.variant:
        print(json.dumps(measure(args)))
        return

    from rsvlm.config import compose
    from rsvlm.data.prepare import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="rsvlm-bench-generation-") as workdir:
        started = time.perf_counter()
        prepare_dataset(compose(job_overrides(args, workdir)).data)
        print(f"prepared the synthetic data in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        sys.argv += ["--workdir", workdir]
        results = every_variant(__file__, "--variant", VARIANTS)
        answers = {name: json.loads(answers_file(workdir, name).read_text()) for name in VARIANTS}
    sequential, batched, in_process, ray_data = (results[name] for name in VARIANTS)
    identical = answers["sequential"] == answers["batched"]
    figures = {
        "questions": len(answers["batched"]), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "model_params": batched["params"], "cores": os.cpu_count(),
        "mean_new_tokens": {"sequential": sequential["mean_new_tokens"], "batched": batched["mean_new_tokens"]},
        "batched_row_steps_per_answer": batched["row_steps_per_answer"],
        "sequential_answers_per_s": round(sequential["answers_per_s"], 2),
        "batched_answers_per_s": round(batched["answers_per_s"], 2),
        "batched_over_sequential": round(batched["answers_per_s"] / sequential["answers_per_s"], 3),
        # The ratio split in two: the work up to the first token, and each later decoding step.
        "first_token_ms_per_answer": {name: round(r["first_token_ms_per_answer"], 3)
                                      for name, r in (("sequential", sequential), ("batched", batched))},
        "later_step_ms_per_row": {name: round(r["later_step_ms_per_row"], 4)
                                  for name, r in (("sequential", sequential), ("batched", batched))},
        "answers_identical": identical,
        "in_process_answers_per_s": round(in_process["answers_per_s"], 2),
        "in_process_s": round(in_process["seconds"], 2),
        "ray_data_answers_per_s": round(ray_data["answers_per_s"], 2),
        "ray_data_s": round(ray_data["seconds"], 2),
        "ray_data_warm_answers_per_s": round(ray_data["warm_answers_per_s"], 2),
        "ray_init_s": round(ray_data["ray_init_s"], 2),
        # Every path answers with the same greedy decoding; the Ray Data path batches rows in other groups.
        "end_to_end_answers_identical": answers["in_process"] == answers["batched"] == answers["ray_data"],
        "threads": {name: r["threads"] for name, r in results.items()},
    }
    print(json.dumps(figures))
    if not identical:
        differ = sum(a != b for a, b in zip(answers["sequential"], answers["batched"]))
        raise SystemExit(f"batched answers differ from sequential ones on {differ} of {len(answers['batched'])} "
                         "questions")


def answers_file(workdir: str, variant: str) -> Path:
    """Where a variant leaves its answers for the comparison (kept out of its JSON line and the log)."""
    return Path(workdir) / f"answers-{variant}.json"


def job_overrides(args: argparse.Namespace, workdir: str, workers: int = 0) -> list[str]:
    """The evaluate job on the synthetic split: untracked, the bench's question count, tokens and batch."""
    overrides = [f"workdir={workdir}", "tracking=off", "data=synthetic", "benchmark=synthetic",
                 f"benchmark.max_new_tokens={args.max_new_tokens}", f"benchmark.batch_size={args.batch_size}",
                 f"benchmark.workers={workers}", *PRESETS[args.preset]["overrides"]]
    if args.questions:
        overrides.append(f"benchmark.limit={args.questions}")
    return overrides


def measure(args: argparse.Namespace) -> dict:
    from rsvlm.config import compose
    from rsvlm.data.storage import Storage
    from rsvlm.eval.benchmark import read_questions

    job = compose(job_overrides(args, args.workdir, workers=1 if args.variant == "ray_data" else 0))
    bench = job.benchmark
    questions = read_questions(Storage(job.storage).read_text(bench.questions), bench.questions, bench.limit)
    if args.variant in ("sequential", "batched"):
        figures = measure_generation(job, questions, 1 if args.variant == "sequential" else args.batch_size,
                                     args.repeats)
    elif args.variant == "in_process":
        figures = measure_in_process(job, questions)
    else:
        figures = measure_ray_data(job, questions)
    answers_file(args.workdir, args.variant).write_text(json.dumps(figures.pop("answers")))
    return figures


def measure_generation(job, questions: list[dict], batch_size: int, repeats: int) -> dict:
    """``generate_answers`` over every question at ``batch_size``: the median of ``repeats`` timed calls
    after a warm-up call and a call that records the answers and their token counts."""
    import torch

    from rsvlm.data.images import open_rgb
    from rsvlm.data.storage import Storage, resolve_inside
    from rsvlm.eval.answering import BASE_MODEL, load_for_evaluation
    from rsvlm.eval.generate import Prompt, generate_answers

    storage, bench = Storage(job.storage), job.benchmark
    images: dict = {}
    prompts = []
    for question in questions:  # as QuestionAnswerer builds them
        image = question.get("image") or ""
        if image and image not in images:
            images[image] = open_rgb(storage.read_bytes(resolve_inside(bench.image_root, image)))
        prompts.append(Prompt(question["text"], images[image] if image else None))
    loaded = load_for_evaluation(job, BASE_MODEL)
    counts = count_new_tokens(loaded)

    def generate(some, max_new_tokens=bench.max_new_tokens):
        return generate_answers(loaded, some, batch_size=batch_size, max_new_tokens=max_new_tokens)

    generate(prompts[:job.benchmark.batch_size])
    counts.clear()
    answers = generate(prompts)
    new_tokens, row_steps = sum(n for n, _ in counts), sum(steps for _, steps in counts)
    times, first_token_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        if generate(prompts) != answers:
            raise RuntimeError("generate_answers answered differently on a repeat")
        times.append(time.perf_counter() - started)
        # The same call stopped after the first token: tokenisation, image preprocessing and the prefill.
        started = time.perf_counter()
        generate(prompts, max_new_tokens=1)
        first_token_times.append(time.perf_counter() - started)
    seconds, first_token_s = statistics.median(times), statistics.median(first_token_times)
    return {"answers_per_s": len(answers) / seconds, "seconds": seconds, "answers": answers,
            "mean_new_tokens": round(new_tokens / len(answers), 2),
            "row_steps_per_answer": round(row_steps / len(answers), 2),
            "first_token_ms_per_answer": 1000 * first_token_s / len(answers),
            # Each later decoding step of one batch row (an answer's token, or padding after its end).
            "later_step_ms_per_row": 1000 * (seconds - first_token_s) / max(1, row_steps - len(answers)),
            "threads": torch.get_num_threads(), "params": sum(p.numel() for p in loaded.model.parameters())}


def count_new_tokens(loaded) -> list[tuple[int, int]]:
    """Wrap the model's ``generate`` to note, per answer, (its new tokens, the steps its batch row ran).

    An answer's tokens run up to and including its first end-of-sequence token, else to the end of the
    batch's output; rows that finished earlier are padded to the batch's length, so the steps are the same
    for every row of a batch.
    """
    model, eos = loaded.model, loaded.tokenizer.eos_token_id
    original = model.generate
    counts: list[tuple[int, int]] = []

    def generate(*args, **kwargs):
        output = original(*args, **kwargs)
        new = output[:, kwargs["input_ids"].shape[1]:]
        for row in new.tolist():
            counts.append((row.index(eos) + 1 if eos in row else len(row), len(row)))
        return output

    model.generate = generate  # an instance attribute: generate_answers calls it as model.generate(**inputs)
    return counts


def measure_in_process(job, questions: list[dict]) -> dict:
    """``answer_questions`` with ``benchmark.workers=0``: model load, image reads and generation."""
    import torch

    from rsvlm.eval.answering import BASE_MODEL, answer_questions

    started = time.perf_counter()
    answers = answer_questions(job, BASE_MODEL, questions)
    seconds = time.perf_counter() - started
    return {"answers_per_s": len(answers) / seconds, "seconds": seconds, "answers": answers,
            "threads": torch.get_num_threads()}


def measure_ray_data(job, questions: list[dict]) -> dict:
    """``answer_questions`` with ``benchmark.workers=1`` on a local cluster started as the job starts it."""
    import ray

    from rsvlm.eval.answering import BASE_MODEL, answer_questions
    from rsvlm.ray_session import ensure_ray

    started = time.perf_counter()
    ensure_ray(job.ray_address)
    ray_init_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        answers = answer_questions(job, BASE_MODEL, questions)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        warm = answer_questions(job, BASE_MODEL, questions)
        warm_seconds = time.perf_counter() - started
        threads = actor_threads(job.benchmark.workers)
    finally:
        ray.shutdown()
    if warm != answers:
        raise RuntimeError("the second Ray Data call answered differently from the first")
    return {"answers_per_s": len(answers) / seconds, "seconds": seconds, "answers": answers,
            "warm_answers_per_s": len(answers) / warm_seconds, "ray_init_s": ray_init_s, "threads": threads}


class _ThreadProbe:
    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        return {"threads": np.full(len(batch["item"]), torch.get_num_threads())}


def actor_threads(workers: int) -> int:
    """torch's thread count in an actor started with answer_questions' ``map_batches`` resources."""
    import ray

    dataset = ray.data.from_items([0]).map_batches(_ThreadProbe, concurrency=workers, num_gpus=0,
                                                   batch_format="numpy")
    return int(next(iter(dataset.iter_rows()))["threads"])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

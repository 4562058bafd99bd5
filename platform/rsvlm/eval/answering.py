"""Answer a benchmark's questions with a model: in this process, or on Ray Data with an actor pool.

Ray Data spreads the questions over ``benchmark.workers`` actors; each loads the model once (from the
pinned URI, so every actor gets the same version) and answers batches with the same batched greedy
generation as the in-process path, on a GPU when the cluster has one.
"""

from __future__ import annotations

import tempfile
from typing import Any, Sequence

import numpy as np
import ray
import torch

from rsvlm.config import from_dict, to_dict
from rsvlm.config.job import JobConfig
from rsvlm.data.images import open_rgb
from rsvlm.data.storage import Storage, resolve_inside
from rsvlm.eval.generate import Prompt, generate_answers
from rsvlm.model.build import LoadedModel, load_model
from rsvlm.ray_session import ensure_ray
from rsvlm.strategies.checkpoint import load_checkpoint
from rsvlm.tracking import resolve_model_uri

BASE_MODEL = "base"


def load_for_evaluation(job: JobConfig, model_uri: str) -> LoadedModel:
    """The model behind ``model_uri``: ``base`` (untrained), ``models:/…``, ``runs:/…`` or a checkpoint folder."""
    if model_uri == BASE_MODEL:
        return load_model(job.model)
    with tempfile.TemporaryDirectory(prefix="rsvlm-model-") as scratch:
        return load_checkpoint(resolve_model_uri(model_uri, job.tracking.uri, scratch).local_path)


class QuestionAnswerer:
    """Answers batches of question rows with one loaded model (a Ray Data actor, or used directly)."""

    def __init__(self, job: dict[str, Any] | JobConfig, model_uri: str):
        self.job = job if isinstance(job, JobConfig) else from_dict(job)
        self.loaded = load_for_evaluation(self.job, model_uri)
        if torch.cuda.is_available():
            self.loaded.model.to("cuda")
        self.storage = Storage(self.job.storage)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"index", "text", "image"}`` → ``{"index", "answer"}`` (``image`` "" for text-only questions)."""
        bench = self.job.benchmark
        images: dict[str, Any] = {}
        prompts = []
        for text, image in zip(batch["text"], batch["image"]):
            if image and image not in images:
                images[image] = open_rgb(self.storage.read_bytes(resolve_inside(bench.image_root, str(image))))
            prompts.append(Prompt(str(text), images[image] if image else None))
        answers = generate_answers(self.loaded, prompts, batch_size=bench.batch_size,
                                   max_new_tokens=bench.max_new_tokens)
        return {"index": batch["index"], "answer": np.array(answers, dtype=object)}


def answer_questions(job: JobConfig, model_uri: str, questions: Sequence[dict[str, Any]]) -> list[str]:
    """The model's answer to each question, in order; Ray Data actors when ``benchmark.workers > 0``."""
    batch = {"index": np.arange(len(questions)), "text": np.array([q["text"] for q in questions], dtype=object),
             "image": np.array([q.get("image") or "" for q in questions], dtype=object)}
    if job.benchmark.workers == 0:
        answered = QuestionAnswerer(job, model_uri)(batch)
        return [str(a) for a in answered["answer"]]
    ensure_ray(job.ray_address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    rows = [{"index": i, "text": q["text"], "image": q.get("image") or ""} for i, q in enumerate(questions)]
    # Batches of several generation batches per actor call: the actor sorts each by length before padding.
    dataset = ray.data.from_items(rows).map_batches(
        QuestionAnswerer, fn_constructor_kwargs={"job": to_dict(job), "model_uri": model_uri},
        batch_size=job.benchmark.batch_size * 4, compute=ray.data.ActorPoolStrategy(size=job.benchmark.workers),
        num_gpus=gpus, batch_format="numpy")
    answers = [""] * len(questions)
    for row in dataset.iter_rows():
        answers[int(row["index"])] = str(row["answer"])
    return answers

"""Evaluation settings (``benchmark`` group): the benchmark, how its answers are scored, and the judge LLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from rsvlm.config.checks import require


class BoxConvention(Enum):
    """How boxes are written in answer text (``rsvlm.data.boxes`` documents each layout)."""

    geochat = "geochat"
    fitrs = "fitrs"
    thousand = "thousand"


class BenchmarkKind(Enum):
    """How a benchmark's answers are scored (``rsvlm.eval.benchmark.score_predictions``)."""

    mixed = "mixed"  # by each row's category: VQA types, grounding, relation choices (the synthetic split)
    vqa = "vqa"  # exact match per question type, OA and AA (RSVQA-LR/HR, FIT-RSFG VQA)
    captions = "captions"  # BLEU-1..4, METEOR, ROUGE-L, CIDEr (UCM, RSICD, Sydney, NWPU captions)
    grounding = "grounding"  # accuracy at IoU (DIOR-RSVG, GeoChat referring)
    circular = "circular"  # CircularEval over rotated options (FIT-RSRC)
    scene_classification = "scene_classification"  # single- and multi-label (FIT-RSFG)
    complex_comprehension = "complex_comprehension"  # FIT-RSFG task1–task6


class MetricMode(Enum):
    """``reference`` reproduces the published evaluation code, known faults included; ``strict`` fixes them."""

    reference = "reference"
    strict = "strict"


@dataclass
class JudgeConfig:
    """The judge LLM that scores open-ended answers 1–10 (LLaVA-Bench style, ``rsvlm.eval.judge``): any
    OpenAI-compatible chat-completions server. Its API key is read from the environment variable named by
    ``api_key_env`` when a request is sent, so it never appears in configs, logs, caches or MLflow."""

    # Base URL of the OpenAI-compatible API (e.g. http://host:8000/v1 or https://api.openai.com/v1); None = no judge.
    url: Optional[str] = None
    model: str = "gpt-4o-mini"
    # The NAME of the environment variable holding the key (unset = no Authorization header is sent).
    api_key_env: str = "RSVLM_JUDGE_API_KEY"
    timeout_s: float = 60.0
    # Retries after a connection error, a timeout, 429 or 5xx, with exponential backoff (Retry-After honoured).
    max_retries: int = 4
    # Replies already paid for, by sha256(model, prompt, temperature); None = no cache.
    cache_dir: Optional[str] = "${workdir}/judge_cache"
    temperature: float = 0.0
    max_tokens: int = 256

    def __post_init__(self) -> None:
        if self.url is not None:
            # The URL is not echoed: it might carry credentials.
            require(self.url.startswith(("http://", "https://")), "benchmark.judge.url",
                    "must be an http:// or https:// base URL such as http://host:8000/v1")
            require("@" not in self.url.split("://", 1)[1].split("/", 1)[0], "benchmark.judge.url",
                    "must not carry credentials; put the key in the environment variable named by "
                    "benchmark.judge.api_key_env")
        require(bool(self.model), "benchmark.judge.model", "must name the judge model")
        # Not echoed either: a key pasted here by mistake must not reach the error message.
        require(self.api_key_env.isascii() and self.api_key_env.isidentifier(), "benchmark.judge.api_key_env",
                "must be the NAME of an environment variable (letters, digits, _), not the key itself")
        require(self.timeout_s > 0, "benchmark.judge.timeout_s", "must be > 0")
        require(self.max_retries >= 0, "benchmark.judge.max_retries", "must be >= 0")
        require(0.0 <= self.temperature <= 2.0, "benchmark.judge.temperature", "must be in [0, 2]")
        require(self.max_tokens > 0, "benchmark.judge.max_tokens", "must be > 0")


@dataclass
class BenchmarkConfig:
    """A benchmark: a questions file in the public format and the images it refers to."""

    # Names the benchmark: its results folder (<workdir>/eval/<name>/), its MLflow run (eval-<name>-…), tag
    # and metric prefix (eval/<name>/…); every conf/benchmark/*.yaml sets it.
    name: Optional[str] = None
    questions: str = "${workdir}/data/raw/test_questions.jsonl"
    image_root: str = "${workdir}/data/raw"
    primary_metric: str = "vqa_accuracy"
    batch_size: int = 16
    max_new_tokens: int = 24
    # Evaluate only the first N questions; None = all.
    limit: Optional[int] = None
    iou_threshold: float = 0.5
    kind: BenchmarkKind = BenchmarkKind.mixed
    # How grounding answers and ground truths write boxes.
    box_convention: BoxConvention = BoxConvention.geochat
    mode: MetricMode = MetricMode.reference
    # Score this existing answer file (public format: question_id, answer, category, ground_truth) instead
    # of generating answers with a model.
    predictions: Optional[str] = None
    # Ray Data actors that generate answers (each loads the model; one GPU each when the cluster has GPUs).
    # 0 = generate in this process.
    workers: int = 1
    # The judge LLM for open-ended categories (complex reasoning, detailed description).
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self) -> None:
        require(self.workers >= 0, "benchmark.workers", "must be >= 0")
        require(self.batch_size > 0, "benchmark.batch_size", "must be > 0")
        require(self.max_new_tokens > 0, "benchmark.max_new_tokens", "must be > 0")
        require(self.limit is None or self.limit > 0, "benchmark.limit", "must be > 0 or null")
        require(0.0 < self.iou_threshold <= 1.0, "benchmark.iou_threshold", "must be in (0, 1]")

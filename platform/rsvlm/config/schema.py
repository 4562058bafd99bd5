"""Typed configuration: the only source of settings for every job.

Each dataclass mirrors one Hydra group in ``conf/``. Hydra validates keys and types when it composes;
``__post_init__`` checks the invariants that span fields, and runs when a job turns the composed config
into these objects (``OmegaConf.to_object``), so a bad value fails on the driver before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

from rsvlm.config.errors import ConfigError


class StrategyName(Enum):
    full = "full"
    lora = "lora"
    moe_lora = "moe_lora"


class Routing(Enum):
    """How MoE-LoRA picks experts: per token (a linear router on the layer input) or per task (MOELoRA)."""

    token = "token"
    task = "task"


class Sharding(Enum):
    """How several workers hold the model: whole replicas (DDP) or sharded parameters, grads and optimizer
    state (FSDP2, ``torch.distributed.fsdp.fully_shard``; full fine-tuning only)."""

    ddp = "ddp"
    fsdp = "fsdp"


class RankSplit(Enum):
    """What ``strategy.rank`` means for MoE-LoRA: the total rank shared by the experts (MOELoRA), or each one's."""

    total = "total"
    per_expert = "per_expert"


class Trainability(Enum):
    """How one part of the model (vision tower, projector, LLM) is trained."""

    frozen = "frozen"
    full = "full"
    adapter = "adapter"


class DataFormat(Enum):
    """Instruction-file formats ``prepare_data`` reads (``auto`` detects; see ``rsvlm.data.formats``)."""

    auto = "auto"
    llava = "llava"  # LLaVA / RS-GPT4V conversation JSON list or JSONL
    geochat = "geochat"  # GeoChat instruct JSON (LLaVA-shaped, task prefixes [grounding] [refer] [identify])
    fitrs = "fitrs"  # FIT-RS instructions, and FIT-RSFG / FIT-RSRC question files
    rsvqa = "rsvqa"  # RSVQA questions/answers JSON pair


class OnError(Enum):
    fail = "fail"
    skip = "skip"


class DataVerify(Enum):
    """How finetune checks a prepared dataset against its manifest on the driver, before Ray starts.

    ``sizes``: every shard exists with the byte size the manifest records (one metadata request per shard).
    ``full``: that, plus reading every shard to check its sha256 and the dataset's fingerprint (on S3 this
    downloads the shards). ``auto``: ``sizes``, plus ``full`` when the shards total at most
    ``data.verify_full_max_mb``.
    """

    auto = "auto"
    sizes = "sizes"
    full = "full"


class DType(Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class MixedPrecision(Enum):
    """Autocast for training. ``auto`` is bf16 on GPUs that support it and none on CPU; the trainable weights
    and the optimizer stay fp32 either way (fp32 master weights)."""

    auto = "auto"
    bf16 = "bf16"
    none = "none"


class AttentionImplementation(Enum):
    """transformers' attention kernels: ``sdpa`` (torch's fused scaled-dot-product) or the plain ``eager``."""

    sdpa = "sdpa"
    eager = "eager"


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


class SearchAlgorithm(Enum):
    """How a sweep picks trials (``rsvlm.tune.space``)."""

    grid = "grid"  # every combination of the grid dimensions (each one ``num_samples`` times)
    random = "random"  # grid dimensions crossed, the others drawn at random, ``num_samples`` times
    optuna = "optuna"  # Optuna's TPE: each trial's values chosen from the results so far


class TrialScheduler(Enum):
    """``fifo`` runs every trial to the end; ``asha`` stops the worse ones at each rung (ASHA)."""

    fifo = "fifo"
    asha = "asha"


class OptimizeMode(Enum):
    min = "min"
    max = "max"


class ImageAspect(Enum):
    """LLaVA-1.5's ``pad`` expands to a square filled with the processor's mean colour; ``resize`` squashes."""

    pad = "pad"
    resize = "resize"


def _require(condition: bool, key: str, problem: str, choices: Any = None) -> None:
    if not condition:
        raise ConfigError(key, problem, choices)


@dataclass
class StorageConfig:
    """Object storage for ``s3://`` URIs. Credentials come only from the standard AWS environment / profile
    chain, never from here, so they never reach configs, logs or MLflow params."""

    # S3-compatible endpoint (MinIO, a local test server); None = $AWS_ENDPOINT_URL, else AWS itself.
    endpoint_url: Optional[str] = None
    region: Optional[str] = None


@dataclass
class SyntheticDataConfig:
    """Settings of the built-in synthetic remote-sensing generator (``rsvlm.data.synthetic``)."""

    seed: int = 0
    num_train_images: int = 400
    num_test_images: int = 60
    image_size: int = 128

    def __post_init__(self) -> None:
        _require(self.num_train_images > 0, "data.synthetic.num_train_images", "must be > 0")
        _require(self.num_test_images > 0, "data.synthetic.num_test_images", "must be > 0")
        _require(self.image_size >= 32, "data.synthetic.image_size", "must be >= 32 pixels")


@dataclass
class DataConfig:
    """Where instruction data comes from and how it becomes training samples."""

    # Names the dataset in each record's `source` (unless the record names its own) and in the manifest's
    # counts; None = the source file's name without its extension.
    name: Optional[str] = None
    # Raw instruction file (LLaVA conversation JSON list or JSONL) and the folder its image paths are relative to;
    # required (every data/*.yaml sets them or asks for them).
    source: str = MISSING
    image_root: str = MISSING
    format: DataFormat = DataFormat.auto
    # The answers file of an RSVQA pair (format rsvqa: source is the questions file).
    answers: Optional[str] = None
    # The prepared dataset: canonical JSONL shards + manifest.json written by prepare_data (its `output`),
    # read by finetune. A local path, file:// or s3:// URI.
    uri: str = "${workdir}/data/prepared"
    on_error: OnError = OnError.fail
    records_per_shard: int = 10_000
    # When set, prepare_data first generates this synthetic dataset into image_root.
    synthetic: Optional[SyntheticDataConfig] = None
    max_length: int = 256
    # LLaVA silently trains on samples whose labels are all masked ("tokenization mismatch"); we count them
    # and refuse to train when more than this fraction of a dataset would be fully masked.
    max_fully_masked_fraction: float = 0.01
    shuffle: bool = True
    # Share of the prepared records held out for val/loss, chosen by a hash of each record's id: stable
    # across runs, resumes and worker counts, and decided before any image is read. 0 = no validation.
    val_fraction: float = 0.01
    # Images fetched concurrently per preprocessing batch. 1 is fastest when the store answers in about a
    # millisecond (local disk, an endpoint on the same machine); raise it (8–16) for a remote S3 whose GETs
    # wait tens of milliseconds.
    fetch_threads: int = 1
    # What finetune checks of the prepared dataset before training (DataVerify): shard sizes always, the
    # full fingerprint (every byte read) with `full`, or with `auto` when the shards total <= verify_full_max_mb.
    verify: DataVerify = DataVerify.auto
    verify_full_max_mb: int = 512

    def __post_init__(self) -> None:
        _require(self.max_length >= 16, "data.max_length", "must be >= 16 tokens")
        _require(self.verify_full_max_mb >= 0, "data.verify_full_max_mb", "must be >= 0")
        _require(0.0 <= self.max_fully_masked_fraction <= 1.0, "data.max_fully_masked_fraction", "must be in [0, 1]")
        _require(self.records_per_shard > 0, "data.records_per_shard", "must be > 0")
        _require(self.fetch_threads >= 1, "data.fetch_threads", "must be >= 1")
        _require(0.0 <= self.val_fraction < 0.5, "data.val_fraction", "must be in [0, 0.5)")


@dataclass
class TinyModelConfig:
    """Dimensions of the in-process tiny LLaVA used by the demo and tests (no download)."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden_size: int = 96
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 192
    vocab_size: int = 1024
    max_position_embeddings: int = 512
    # LoRA keeps lm_head and the final norm frozen. At Llama's default init (0.02) the largest logit a
    # frozen random head can reach is about hidden_size * 0.02 ≈ 2, so p(answer) is capped near 1% and LoRA
    # plateaus at loss ≈ 5; a pretrained head has no such cap. A larger init makes the tiny stand-in behave.
    initializer_range: float = 0.1

    def __post_init__(self) -> None:
        _require(self.image_size % self.patch_size == 0, "model.tiny.image_size", "must be a multiple of patch_size")
        _require(self.text_hidden_size % self.text_heads == 0, "model.tiny.text_hidden_size", "must divide by text_heads")
        _require(self.vision_hidden_size % self.vision_heads == 0, "model.tiny.vision_hidden_size",
                 "must divide by vision_heads")
        _require(self.vocab_size >= 300, "model.tiny.vocab_size", "must be >= 300 (256 byte tokens + specials)")


@dataclass
class ModelConfig:
    """Which vision-language model to fine-tune: ``tiny`` (built in-process) or a hub id / local folder."""

    name: str = "tiny"
    name_or_path: str = "tiny"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # The dtype weights are loaded in. Frozen weights stay in it; trainable ones are made fp32 when
    # train.mixed_precision autocasts (fp32 master weights).
    dtype: DType = DType.float32
    attn_implementation: AttentionImplementation = AttentionImplementation.sdpa
    image_aspect: ImageAspect = ImageAspect.pad
    # Seed of the tiny model's initial weights; the same seed gives the same untrained model.
    init_seed: int = 0

    def __post_init__(self) -> None:
        _require(bool(self.name_or_path), "model.name_or_path", "must name 'tiny', a hub id or a folder")


@dataclass
class StrategyConfig:
    """Fine-tuning strategy and per-part trainability. LoRA fields are ignored by ``full``."""

    name: StrategyName = StrategyName.lora
    vision_tower: Trainability = Trainability.frozen
    projector: Trainability = Trainability.full
    llm: Trainability = Trainability.adapter
    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    # Leaf names of the LLM's linear layers to adapt; empty = every linear layer of the LLM (LLaVA's recipe).
    target_modules: list[str] = field(default_factory=list)
    # MoE-LoRA (ignored by the others). top_k None = dense (every expert, softmax-weighted).
    num_experts: int = 4
    rank_split: RankSplit = RankSplit.total
    top_k: Optional[int] = None
    routing: Routing = Routing.token
    aux_loss_coef: float = 0.01
    # Task names for routing=task, in gate order; empty = the prepared dataset's tasks (filled by finetune).
    tasks: list[str] = field(default_factory=list)

    @property
    def expert_rank(self) -> int:
        """Each MoE-LoRA expert's rank."""
        return self.rank // self.num_experts if self.rank_split is RankSplit.total else self.rank

    def __post_init__(self) -> None:
        adapters = self.name in (StrategyName.lora, StrategyName.moe_lora)
        for part in ("vision_tower", "projector", "llm"):
            value = getattr(self, part)
            if value is Trainability.adapter and not adapters:
                raise ConfigError(f"strategy.{part}", f"'adapter' needs an adapter strategy, not '{self.name.value}'",
                                  [t.value for t in Trainability if t is not Trainability.adapter])
        if adapters:
            _require(self.llm is Trainability.adapter, "strategy.llm",
                     f"must be 'adapter' for strategy '{self.name.value}'", ["adapter"])
            _require(self.rank > 0, "strategy.rank", "must be > 0")
            _require(self.alpha > 0, "strategy.alpha", "must be > 0")
            _require(0.0 <= self.dropout < 1.0, "strategy.dropout", "must be in [0, 1)")
        if self.name is StrategyName.moe_lora:
            _require(self.num_experts >= 1, "strategy.num_experts", "must be >= 1")
            _require(self.expert_rank >= 1, "strategy.rank",
                     f"{self.rank} split across {self.num_experts} experts leaves none (rank_split=total)")
            _require(self.rank_split is RankSplit.per_expert or self.rank % self.num_experts == 0, "strategy.rank",
                     f"must be a multiple of strategy.num_experts={self.num_experts} with rank_split=total")
            _require(self.top_k is None or 1 <= self.top_k <= self.num_experts, "strategy.top_k",
                     f"must be in [1, num_experts={self.num_experts}] or null (dense)")
            _require(self.aux_loss_coef >= 0, "strategy.aux_loss_coef", "must be >= 0")
        _require(any(getattr(self, p) is not Trainability.frozen for p in ("vision_tower", "projector", "llm")),
                 "strategy", "every part is frozen: nothing would train")


@dataclass
class OptimConfig:
    lr: float = 2e-4
    # LLaVA trains the projector with its own learning rate (2e-5 in the LoRA recipe); None = same as lr.
    projector_lr: Optional[float] = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", "must be > 0")
        _require(self.projector_lr is None or self.projector_lr > 0, "optim.projector_lr", "must be > 0 or null")
        _require(0.0 <= self.warmup_ratio < 1.0, "optim.warmup_ratio", "must be in [0, 1)")
        _require(self.max_grad_norm > 0, "optim.max_grad_norm", "must be > 0")


@dataclass
class TrainConfig:
    """The training loop: how long, how big a step, checkpoints, validation and failure handling."""

    # Optimizer steps. Set it to null and set `epochs` to derive it from the prepared dataset's size.
    max_steps: Optional[int] = 600
    epochs: Optional[float] = None
    micro_batch_size: int = 8
    # Samples per optimizer step over all workers; gradient accumulation makes up the difference from
    # micro_batch_size × workers. null = micro_batch_size × workers (no accumulation).
    global_batch_size: Optional[int] = None
    log_every: int = 50
    seed: int = 0
    # Names the run: its folder under storage_uri and its MLflow run. Running again with the same name resumes
    # from the run's latest checkpoint and appends to the same MLflow run. null = <registered model>-<time>-<random>.
    run_name: Optional[str] = None
    # Where checkpoints go: a local folder or s3://bucket/prefix (through storage.endpoint_url).
    storage_uri: str = "${workdir}/ray_results"
    # Save a resumable checkpoint every N optimizer steps (and always at the end). 0 = only at the end.
    checkpoint_every: int = 200
    # Checkpoints kept: the best by val/loss when validation is on, else the latest; the latest is always kept.
    keep_checkpoints: int = 2
    # Validation micro-batches run at every checkpoint (on data.val_fraction of the records). 0 = none.
    val_batches: int = 20
    # How often Ray Train restarts the workers after one dies, each time from the latest checkpoint.
    max_failures: int = 0
    mixed_precision: MixedPrecision = MixedPrecision.auto
    # Threads torch may use in each worker; Ray sets OMP_NUM_THREADS=1 otherwise. 0 = the worker's CPUs.
    torch_threads: int = 0
    # Recompute the LLM's activations in the backward pass: less memory, about a third more compute.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _require((self.max_steps is None) != (self.epochs is None), "train.max_steps",
                 "set exactly one of train.max_steps and train.epochs (the other null)")
        _require(self.max_steps is None or self.max_steps > 0, "train.max_steps", "must be > 0")
        _require(self.epochs is None or self.epochs > 0, "train.epochs", "must be > 0")
        _require(self.micro_batch_size > 0, "train.micro_batch_size", "must be > 0")
        _require(self.global_batch_size is None or self.global_batch_size > 0, "train.global_batch_size",
                 "must be > 0 or null")
        _require(self.log_every > 0, "train.log_every", "must be > 0")
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        _require(self.val_batches >= 0, "train.val_batches", "must be >= 0")
        _require(self.max_failures >= -1, "train.max_failures", "must be >= 0 (or -1: retry forever)")
        _require(self.torch_threads >= 0, "train.torch_threads", "must be >= 0")


@dataclass
class ScalingConfig:
    """How many Ray Train workers and what each gets. ``num_workers: 0`` runs the loop in the driver."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # ddp, or fsdp for strategy=full (each decoder / encoder layer one shard unit); ignored with one worker.
    sharding: Sharding = Sharding.ddp
    # Seconds a joined cluster may take to offer the workers' CPUs and GPUs (an autoscaler adding nodes; they
    # are requested from it) before the job fails naming what is missing. A local Ray the job started fails
    # at once: nothing will join it.
    resource_wait_s: float = 300.0
    # Times Ray Train may retry starting the worker group (each try waits up to 60 s for its placement)
    # before the run fails; Ray Train's own default retries for ever.
    max_start_failures: int = 2

    @property
    def workers(self) -> int:
        """Processes that train (local mode's driver counts as one)."""
        return max(1, self.num_workers)

    def __post_init__(self) -> None:
        _require(self.num_workers >= 0, "scaling.num_workers", "must be >= 0")
        _require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        _require(self.resource_wait_s >= 0, "scaling.resource_wait_s", "must be >= 0")
        _require(self.max_start_failures >= 0, "scaling.max_start_failures", "must be >= 0")


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///${workdir}/mlflow.db"
    # Where a new experiment keeps its artifacts; beside the database for the embedded default.
    artifact_location: str = "${workdir}/mlartifacts"
    experiment: str = "rsvlm"
    # None = rsvlm-<model.name>-<strategy.name>.
    registered_model: Optional[str] = None
    alias: str = "candidate"
    # Seconds between samples of CPU, memory, disk, network and GPU into system/* metrics (rank 0's machine).
    # 0 = off.
    system_metrics_interval_s: float = 10.0
    # Tags put on every run a job creates (owner, ticket…); a Hydra multirun adds rsvlm.multirun=<its id>.
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.system_metrics_interval_s >= 0, "tracking.system_metrics_interval_s", "must be >= 0")


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
            _require(self.url.startswith(("http://", "https://")), "benchmark.judge.url",
                     "must be an http:// or https:// base URL such as http://host:8000/v1")
            _require("@" not in self.url.split("://", 1)[1].split("/", 1)[0], "benchmark.judge.url",
                     "must not carry credentials; put the key in the environment variable named by "
                     "benchmark.judge.api_key_env")
        _require(bool(self.model), "benchmark.judge.model", "must name the judge model")
        # Not echoed either: a key pasted here by mistake must not reach the error message.
        _require(self.api_key_env.isascii() and self.api_key_env.isidentifier(), "benchmark.judge.api_key_env",
                 "must be the NAME of an environment variable (letters, digits, _), not the key itself")
        _require(self.timeout_s > 0, "benchmark.judge.timeout_s", "must be > 0")
        _require(self.max_retries >= 0, "benchmark.judge.max_retries", "must be >= 0")
        _require(0.0 <= self.temperature <= 2.0, "benchmark.judge.temperature", "must be in [0, 2]")
        _require(self.max_tokens > 0, "benchmark.judge.max_tokens", "must be > 0")


@dataclass
class BenchmarkConfig:
    """A benchmark: a questions file in the public format and the images it refers to."""

    # Names the dataset in each record's `source` (unless the record names its own) and in the manifest's
    # counts; None = the source file's name without its extension.
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
        _require(self.workers >= 0, "benchmark.workers", "must be >= 0")
        _require(self.batch_size > 0, "benchmark.batch_size", "must be > 0")
        _require(self.max_new_tokens > 0, "benchmark.max_new_tokens", "must be > 0")
        _require(self.limit is None or self.limit > 0, "benchmark.limit", "must be > 0 or null")
        _require(0.0 < self.iou_threshold <= 1.0, "benchmark.iou_threshold", "must be in (0, 1]")


@dataclass
class SearchDimension:
    """One swept setting: exactly one of the fields, e.g. ``{grid: [32, 128]}`` or ``{loguniform: [1e-5, 1e-3]}``."""

    grid: Optional[list[Any]] = None  # every value, crossed with the other grid dimensions
    choice: Optional[list[Any]] = None  # one value drawn per trial
    uniform: Optional[list[float]] = None  # [low, high]
    loguniform: Optional[list[float]] = None  # [low, high], both > 0: for learning rates
    randint: Optional[list[int]] = None  # [low, high): an integer


@dataclass
class SweepConfig:
    """A Ray Tune sweep (``jobs/sweep.py``): every trial is one fine-tuning run with some settings changed.

    ``space`` is keyed like the config itself, ``space.strategy.rank`` sweeping ``strategy.rank``; each trial
    is then logged with the same params as a plain finetune run.
    """

    # Names the sweep: its folder under storage_uri and its parent MLflow run. The same name again resumes an
    # interrupted sweep. null = sweep-<time>-<random>.
    name: Optional[str] = None
    search: SearchAlgorithm = SearchAlgorithm.random
    # Repeats of the grid (grid, random), or trials (optuna).
    num_samples: int = 1
    # {group: {setting: SearchDimension}}; typed in __post_init__ (OmegaConf cannot type a dict of dicts).
    space: dict[str, Any] = field(default_factory=dict)
    # What picks the best trial, and what ASHA and Optuna act on: a metric reported at every checkpoint.
    metric: str = "val/loss"
    mode: OptimizeMode = OptimizeMode.min
    scheduler: TrialScheduler = TrialScheduler.fifo
    # ASHA: optimizer steps every trial gets before it may be stopped (null = train.checkpoint_every), and
    # 1/reduction_factor of the trials go on at each rung.
    grace_period: Optional[int] = None
    reduction_factor: float = 2.0
    # Trials running at once; null = as many as the cluster's CPUs and GPUs hold (rsvlm.tune.space).
    max_concurrent_trials: Optional[int] = None
    # CPUs of each trial's driver process (it builds the trial's data pipeline and runs its Ray Train
    # controller; the workers have their own).
    trial_cpus: float = 1.0
    # CPUs kept out of the concurrency count, for Ray Data's read and preprocessing tasks.
    reserved_cpus: float = 1.0
    # Times a failed trial is started again (each time resuming from its latest checkpoint). Failures of a
    # single worker are train.max_failures, handled inside the trial.
    max_trial_failures: int = 0
    # Where the sweep's state goes (local folder or s3://); each trial's checkpoints go under train.storage_uri.
    storage_uri: str = "${workdir}/sweeps"
    seed: int = 0

    def __post_init__(self) -> None:
        kinds = [f.name for f in fields(SearchDimension)]
        for group, keys in self.space.items():
            _require(isinstance(keys, dict), f"sweep.space.{group}", "must map settings of the group to dimensions, "
                     "e.g. sweep.space.strategy.rank={grid:[32,128]}")
            for key, dimension in keys.items():
                if isinstance(dimension, SearchDimension):
                    continue
                _require(isinstance(dimension, dict) and set(dimension) <= set(kinds), f"sweep.space.{group}.{key}",
                         f"must be one of {{{', '.join(k + ': …' for k in kinds)}}}", kinds)
                keys[key] = SearchDimension(**dimension)
        _require(self.num_samples >= 1, "sweep.num_samples", "must be >= 1")
        _require(bool(self.metric), "sweep.metric", "must name a reported metric such as val/loss")
        _require(self.grace_period is None or self.grace_period >= 1, "sweep.grace_period", "must be >= 1 or null")
        _require(self.reduction_factor > 1, "sweep.reduction_factor", "must be > 1")
        _require(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "sweep.max_concurrent_trials",
                 "must be >= 1 or null")
        _require(self.trial_cpus >= 0, "sweep.trial_cpus", "must be >= 0")
        _require(self.reserved_cpus >= 0, "sweep.reserved_cpus", "must be >= 0")
        _require(self.max_trial_failures >= -1, "sweep.max_trial_failures", "must be >= 0 (or -1: retry forever)")


@dataclass
class ExportConfig:
    """What ``jobs/export.py`` writes: a plain transformers model with the adapters merged in."""

    # The folder to create (local); required by export, which refuses an existing one.
    output: Optional[str] = None
    # The task whose function is merged, for adapters that depend on it (MoE-LoRA with routing=task).
    task: Optional[str] = None


@dataclass
class JobConfig:
    """The whole configuration of any rsvlm job (each job reads the parts it needs)."""

    workdir: str = "runs"
    # Ray cluster to join; None = a cluster already set by RAY_ADDRESS / `ray job submit`, else a local one.
    ray_address: Optional[str] = None
    # What evaluate / register act on: models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/<path>,
    # a checkpoint folder, or "base" for the untrained model.
    model_uri: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        _require(self.scaling.sharding is Sharding.ddp or self.strategy.name is StrategyName.full,
                 "scaling.sharding", f"fsdp shards full fine-tuning only, not strategy '{self.strategy.name.value}'",
                 ["ddp"])
        _require(self.scaling.num_workers > 0 or not self.train.storage_uri.startswith("s3://"), "train.storage_uri",
                 "local mode (scaling.num_workers=0) writes checkpoints to a local folder, not s3://")
        per_step = self.train.micro_batch_size * self.scaling.workers
        _require(self.train.global_batch_size is None or self.train.global_batch_size % per_step == 0,
                 "train.global_batch_size",
                 f"must be a multiple of train.micro_batch_size × workers = {self.train.micro_batch_size} × "
                 f"{self.scaling.workers} = {per_step}")

    @property
    def gradient_accumulation_steps(self) -> int:
        """Micro-batches each worker accumulates per optimizer step to reach ``train.global_batch_size``."""
        if self.train.global_batch_size is None:
            return 1
        return self.train.global_batch_size // (self.train.micro_batch_size * self.scaling.workers)

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all workers."""
        return self.train.micro_batch_size * self.scaling.workers * self.gradient_accumulation_steps

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model or f"rsvlm-{self.model.name}-{self.strategy.name.value}"

    @property
    def target_model_uri(self) -> str:
        """What evaluate / export act on: ``model_uri``, else the registered model at ``tracking.alias``."""
        return self.model_uri or f"models:/{self.registered_model_name}@{self.tracking.alias}"

"""LLaVA's two-stage recipe on one config: stage 1 aligns the image features (``strategy=align`` on caption
records), stage 2 instruction-tunes with the configured strategy, starting from stage 1's weights
(``model.init_from``). ``jobs/pipeline.py`` runs both; each is an ordinary finetune run."""

from __future__ import annotations

from dataclasses import replace

from rsvlm.config.job import JobConfig
from rsvlm.config.strategy import StrategyConfig, StrategyName, Trainability


def alignment_job(job: JobConfig) -> JobConfig:
    """Stage 1 of ``job``: the same model and data, the align strategy on ``align.tasks`` at ``align.lr`` with no
    weight decay, for ``align.max_steps`` (of ``align.micro_batch_size`` when set); registered as
    ``rsvlm-<model>-align``."""
    align = job.align
    auto = Trainability.frozen if job.model.pretrained else Trainability.full  # see AlignConfig
    strategy = StrategyConfig(name=StrategyName.align, vision_tower=align.vision_tower or auto,
                              projector=Trainability.full, llm=align.llm or auto)
    registered = job.tracking.registered_model
    batch = ({"micro_batch_size": align.micro_batch_size, "global_batch_size": None} if align.micro_batch_size
             else {})
    return replace(
        job, strategy=strategy,
        model=replace(job.model, init_from=None),
        optim=replace(job.optim, lr=align.lr, projector_lr=None, weight_decay=0.0),
        data=replace(job.data, tasks=list(align.tasks)),
        train=replace(job.train, max_steps=align.max_steps, epochs=None, **batch,
                      run_name=f"{job.train.run_name}-align" if job.train.run_name else None),
        tracking=replace(job.tracking, registered_model=f"{registered}-align" if registered else None))


def instruction_job(job: JobConfig, stage1_checkpoint: str) -> JobConfig:
    """Stage 2 of ``job``: its own strategy and data, starting from the stage-1 checkpoint (a folder or URI)."""
    return replace(job, model=replace(job.model, init_from=stage1_checkpoint))

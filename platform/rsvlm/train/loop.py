"""The per-worker training loop that Ray Train runs on every worker (or in the driver in local mode)."""

from __future__ import annotations

from typing import Any

from rsvlm.train.recipe import FinetuneRecipe, RecipeArgs


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Run the fine-tuning recipe with the arguments the driver passed (:meth:`RecipeArgs.to_loop_config`)."""
    recipe = FinetuneRecipe(RecipeArgs.from_loop_config(config))
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()

"""Vision-language models: the tiny in-process LLaVA and real checkpoints by name or path."""

from rsvlm.model.build import LoadedModel, load_model, load_processor
from rsvlm.model.parts import model_parts

__all__ = ["LoadedModel", "load_model", "load_processor", "model_parts"]

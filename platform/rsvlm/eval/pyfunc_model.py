"""The MLflow pyfunc face of an rsvlm checkpoint: ``mlflow.pyfunc.load_model(...).predict(df)`` answers questions
about images, and ``mlflow models serve`` serves it.

MLflow logs this file as *model code* (models-from-code, ``python_model=<this file>``): it is copied into the
model and run when the model is loaded, and the ``set_model`` call at the bottom hands MLflow the wrapper. So
nothing is pickled at all: the weights stay the checkpoint's safetensors (the model's ``checkpoint`` artifact),
and loading runs this reviewed source, not a byte stream that could hold arbitrary code. The model needs
rsvlm installed where it is loaded (``--env-manager local`` from an rsvlm environment).

Input: a DataFrame with ``image`` (base64 of PNG/JPEG bytes, raw bytes, or a ``file://`` / ``s3://`` URI read
with the default storage settings: ``$AWS_ENDPOINT_URL`` and the AWS credential chain), ``question`` and,
optionally, ``max_new_tokens``. Output: one answer string per row, the same greedy answers
``jobs/evaluate.py`` gives (``rsvlm.eval.generate.generate_answers``).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Optional

import mlflow.models
import mlflow.pyfunc
import pandas as pd
from PIL import Image

from rsvlm.config.storage import StorageConfig
from rsvlm.data.images import open_rgb
from rsvlm.data.storage import Storage
from rsvlm.eval.generate import Prompt, generate_answers
from rsvlm.strategies.checkpoint import load_checkpoint
from rsvlm.tracking.logged_models import CHECKPOINT_ARTIFACT

# Generation defaults when a row does not say (a benchmark's).
DEFAULT_MAX_NEW_TOKENS = 32
BATCH_SIZE = 16


class VQAModel(mlflow.pyfunc.PythonModel):
    """Answers ``question`` about ``image`` for each row, with the checkpoint in the model's artifacts."""

    def load_context(self, context) -> None:
        self.loaded = load_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]))
        self.storage = Storage(StorageConfig())

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> list[str]:
        frame = pd.DataFrame(model_input)
        missing = {"image", "question"} - set(frame.columns)
        if missing:
            raise ValueError(f"input needs the columns image and question; missing: {sorted(missing)}")
        prompts = [Prompt(str(question), self._image(value, row))
                   for row, (value, question) in enumerate(zip(frame["image"], frame["question"]))]
        # One generation call per max_new_tokens value: rows keep their order in the answer list.
        limits = (frame["max_new_tokens"].fillna(DEFAULT_MAX_NEW_TOKENS).astype(int).tolist()
                  if "max_new_tokens" in frame.columns else [DEFAULT_MAX_NEW_TOKENS] * len(frame))
        answers = [""] * len(prompts)
        for limit in sorted(set(limits)):
            rows = [i for i, value in enumerate(limits) if value == limit]
            for i, answer in zip(rows, generate_answers(self.loaded, [prompts[i] for i in rows],
                                                        batch_size=BATCH_SIZE, max_new_tokens=limit)):
                answers[i] = answer
        return answers

    def _image(self, value: Any, row: int) -> Optional[Image.Image]:
        """The row's image: decoded base64 or bytes, or read from a URI; None for a text-only question."""
        if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
            return None
        try:
            if isinstance(value, (bytes, bytearray)):
                return open_rgb(bytes(value))
            text = str(value)
            if "://" in text:
                return open_rgb(self.storage.read_bytes(text))
            return open_rgb(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"row {row}: image is neither base64 PNG/JPEG bytes nor a readable file:// or s3:// "
                             f"URI ({type(exc).__name__}: {exc})") from exc


mlflow.models.set_model(VQAModel())

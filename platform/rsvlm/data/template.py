"""Chat templates and label masking.

A conversation becomes a list of segments, each either supervised (assistant answers and their end-of-turn
token) or not (system prompt, user turns, role tags). Each segment is tokenized on its own and the ids are
concatenated, so labels line up with input ids by construction: LLaVA instead tokenizes the whole prompt and
re-derives the answer spans, and when the two token counts disagree it silently masks the whole sample
("tokenization mismatch", LLaVA#661/#1166/#1706). Here a sample can only end up fully masked when truncation
cuts every answer off; :class:`TokenizedSample` says so and the caller counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from rsvlm.config.model import ChatTemplateName

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ChatTemplate:
    """A conversation format: ``system + sep + USER: q + sep + ASSISTANT: a + sep2 + …`` (LLaVA's SeparatorStyle.TWO)."""

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    # The end-of-turn after an answer; None = the tokenizer's eos token (``</s>`` for Llama/Vicuna).
    sep2: str | None = None


VICUNA_V1 = ChatTemplate(
    name="vicuna_v1",
    system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    roles=("USER", "ASSISTANT"),
    sep=" ",
)

CHAT_TEMPLATES: dict[ChatTemplateName, ChatTemplate] = {ChatTemplateName.vicuna_v1: VICUNA_V1}


def chat_template(name: ChatTemplateName) -> ChatTemplate:
    """The template ``model.chat_template`` names."""
    return CHAT_TEMPLATES[ChatTemplateName(name)]


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def fully_masked(self) -> bool:
        """True when no token is supervised: training on it would teach nothing and hide a data problem."""
        return all(label == IGNORE_INDEX for label in self.labels)


def conversation_segments(
    turns: Sequence[Mapping[str, str]], template: ChatTemplate, eos_token: str, for_generation: bool = False
) -> list[tuple[str, bool]]:
    """``(text, supervised)`` pieces of a conversation in ``template``.

    ``turns`` alternate ``{"from": "human"|"gpt", "value": …}``. With ``for_generation`` the last human turn
    ends the prompt with ``ASSISTANT:`` and no answer, ready for the model to continue.
    """
    user, assistant = template.roles
    end_of_answer = template.sep2 if template.sep2 is not None else eos_token
    segments: list[tuple[str, bool]] = []
    prompt = template.system + template.sep
    for turn in turns:
        if turn["from"] == "human":
            prompt += f"{user}: {_image_first(turn['value'])}{template.sep}{assistant}:"
        else:
            segments.append((prompt, False))
            # The space after "ASSISTANT:" belongs to the answer so that generation starts the same way.
            segments.append((f" {turn['value']}{end_of_answer}", True))
            prompt = ""
    if for_generation and prompt:
        segments.append((prompt, False))
    return segments


def tokenize_conversation(
    turns: Sequence[Mapping[str, str]],
    tokenizer,
    template: ChatTemplate,
    image_token_count: int,
    max_length: int,
    for_generation: bool = False,
) -> TokenizedSample:
    """Token ids and labels (``IGNORE_INDEX`` outside assistant answers) of one conversation.

    Each ``<image>`` becomes ``image_token_count`` image tokens, as the model's forward pass expects.
    Truncation keeps the start (where the image tokens are) and never cuts an image token run.
    """
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    input_ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    for text, supervised in conversation_segments(turns, template, tokenizer.eos_token, for_generation):
        ids = []
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            ids.extend([token] * image_token_count if token == image_id else [token])
        input_ids.extend(ids)
        labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
    truncated = len(input_ids) > max_length
    if truncated:
        if input_ids[max_length - 1] == image_id == input_ids[max_length]:
            raise ValueError(f"max_length {max_length} cuts through the image tokens; raise data.max_length")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedSample(input_ids, labels, truncated)


def _image_first(text: str) -> str:
    """LLaVA's ``preprocess_multimodal``: the image placeholder leads the turn, followed by a newline."""
    if IMAGE_PLACEHOLDER not in text:
        return text
    rest = text.replace(IMAGE_PLACEHOLDER, "").strip()
    return f"{IMAGE_PLACEHOLDER}\n{rest}"

"""LLM-as-judge for open-ended answers (complex reasoning, detailed description), LLaVA-Bench style.

RS-GPT4V scores these categories with a judge model's 1–10 scores. As in LLaVA's ``eval_gpt_review_bench.py``
the judge sees the question, a reference answer ("Assistant 1") and the model's answer ("Assistant 2"), and
answers with the two scores on its first line, then an explanation. The relative score is
``mean(candidate) / mean(reference) × 100`` per category (LLaVA's ``summarize_gpt_review.py``).

One difference from LLaVA, on purpose: LLaVA scores a reply without two parsable scores as ``(-1, -1)`` and
averages it in; here such a row is a *failure*, left out of the means and counted (``failures``).

The judge is any OpenAI-compatible server (``POST {url}/chat/completions``), reached with the standard
library. Its API key is read from the environment variable named by ``JudgeConfig.api_key_env`` when a request
is sent; it is never logged, put in an exception, written to the cache or returned. Replies are cached on disk
by ``sha256(model, prompt, temperature)`` so a re-run does not pay for the same judgement twice.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import json
import logging
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from rsvlm.config.errors import ConfigError
from rsvlm.config.evaluation import JudgeConfig
from rsvlm.redaction import MASK, mask_url_credentials

logger = logging.getLogger(__name__)

# The benchmark categories a judge scores (the others have exact metrics).
JUDGE_CATEGORIES = ("complex_reasoning", "detailed_description")

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
ROLE = "Assistant"
# LLaVA's rule for llava_bench_complex / llava_bench_detail (llava/eval/table/rule.json), for remote-sensing
# images. The context sentence is only there when a row carries a description of the image (``context``).
_RULE_HEAD = ("We would like to request your feedback on the performance of two AI assistants in response to the "
              "user question displayed above. The user asks the question on observing a remote-sensing image.")
_RULE_CONTEXT = (" For your reference, the visual content in the image is represented with a few sentences "
                 "describing the image.")
_RULE_TAIL = (
    " \nPlease rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance."
    "\nPlease first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\nIn the subsequent line, please provide a "
    "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
    "which the responses were presented does not affect your judgment.")

# Backoff between retries: BACKOFF_S × 2^attempt, at most BACKOFF_MAX_S; a Retry-After is honoured up to
# RETRY_AFTER_MAX_S.
BACKOFF_S = 1.0
BACKOFF_MAX_S = 60.0
RETRY_AFTER_MAX_S = 300.0
_BODY_EXCERPT = 300


class JudgeError(RuntimeError):
    """The judge could not be reached, or refused the request. The message names the HTTP status and the
    judge's URL (credentials masked) and never carries the API key."""


class MalformedReply(JudgeError):
    """The judge answered 200 but without a chat completion in the body; counted as a failure for that row."""


# ---------------------------------------------------------------------------------------------------- prompt


def build_messages(question: str, reference: str, answer: str, context: Optional[str] = None) -> list[dict[str, str]]:
    """The chat messages of one judgement: LLaVA-Bench's review prompt with the reference as Assistant 1."""
    question = question.replace("<image>", "").strip()
    parts = [f"[Context]\n{context.strip()}\n\n"] if context else []
    parts += [f"[Question]\n{question}\n\n",
              f"[{ROLE} 1]\n{reference.strip()}\n\n[End of {ROLE} 1]\n\n",
              f"[{ROLE} 2]\n{answer.strip()}\n\n[End of {ROLE} 2]\n\n",
              f"[System]\n{_RULE_HEAD}{_RULE_CONTEXT if context else ''}{_RULE_TAIL}\n\n"]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "".join(parts)}]


# "Assistant 1: 8/10, Assistant 2: 6/10" → " : 8 ,  : 6": labels and "/10" / "out of 10" go before counting numbers.
_LABEL_RE = re.compile(r"\b(?:assistant|answer|response|model)\s*#?\s*[12]\b", re.IGNORECASE)
_OUT_OF_RE = re.compile(r"\s*(?:/|out\s+of)\s*10(?:\.0+)?\b", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def parse_scores(review: str) -> Optional[tuple[float, float]]:
    """``(reference, candidate)`` scores from the first non-empty line of a review, or None.

    Accepts LLaVA's ``"8 6"`` and the usual variations (``"8, 6"``, ``"Scores: 8 and 6"``, ``"**8 6**"``,
    ``"Assistant 1: 8/10, Assistant 2: 6/10"``); the line must hold exactly two numbers in [0, 10].
    """
    line = next((line for line in review.splitlines() if line.strip()), "")
    line = _OUT_OF_RE.sub(" ", _LABEL_RE.sub(" ", line))
    numbers = [float(n) for n in _NUMBER_RE.findall(line)]
    if len(numbers) != 2 or not all(0.0 <= n <= 10.0 for n in numbers):
        return None
    return numbers[0], numbers[1]


# ---------------------------------------------------------------------------------------------------- client


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would resend the Authorization header, possibly to another host: refuse it instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


def _scrub(text: str, secret: Optional[str]) -> str:
    """``text`` with the key and any URL credentials masked."""
    if secret:
        text = text.replace(secret, MASK)
    return mask_url_credentials(text)


def _excerpt(text: str, secret: Optional[str]) -> str:
    """The start of a response body for a message: scrubbed first, then cut (a cut key could not be found)."""
    text = " ".join(_scrub(text, secret).split())
    return text[:_BODY_EXCERPT] + ("…" if len(text) > _BODY_EXCERPT else "")


def _retry_after_s(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def chat_completions_url(url: str) -> str:
    """``{url}/chat/completions`` for an OpenAI-compatible base URL (kept when ``url`` already ends with it)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


class JudgeClient:
    """Sends chat completions to the judge, retrying what is worth retrying.

    Retried, with exponential backoff (``Retry-After`` honoured): connection errors, timeouts, 429 and 5xx.
    Any other 4xx (and a redirect) fails at once with :class:`JudgeError`. ``backoff_s`` and ``sleep`` are
    there for tests.
    """

    def __init__(self, config: JudgeConfig, *, backoff_s: float = BACKOFF_S,
                 sleep: Callable[[float], None] = time.sleep):
        if not config.url:
            raise ConfigError("benchmark.judge.url", "is not set: name the judge's OpenAI-compatible base URL, "
                                                     "e.g. benchmark.judge.url=http://127.0.0.1:8000/v1")
        self.config = config
        self.endpoint = chat_completions_url(config.url)
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)

    @property
    def display_url(self) -> str:
        """The endpoint with any credentials masked: what messages and logs show."""
        return mask_url_credentials(self.endpoint)

    def _key(self) -> Optional[str]:
        # Read at each request, never stored on the object (so it is not in its repr, pickles or logs).
        return os.environ.get(self.config.api_key_env) or None

    def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The judge's reply text for ``messages``. Raises :class:`JudgeError` (:class:`MalformedReply` for a
        200 whose body holds no reply)."""
        body = json.dumps({"model": self.config.model, "messages": list(messages),
                           "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}).encode()
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            key = self._key()
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            retry_after: Optional[float] = None
            try:
                with self._opener.open(request, timeout=self.config.timeout_s) as response:
                    raw = response.read()
                return self._reply_text(raw, key)
            except urllib.error.HTTPError as exc:
                status = exc.code
                detail = self._excerpt(exc, key)
                if not (status == 429 or 500 <= status < 600):
                    raise JudgeError(self._refusal(status, exc.reason, detail)) from None
                retry_after = _retry_after_s(exc.headers.get("Retry-After") if exc.headers else None)
                problem = f"HTTP {status} {exc.reason}".rstrip()
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                # Connection refused / reset, DNS, timeouts (socket.timeout is TimeoutError, an OSError).
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                problem = _scrub(f"{type(reason).__name__}: {reason}", key)
            if attempt + 1 >= attempts:
                raise JudgeError(f"judge at {self.display_url} did not answer after {attempts} attempt(s): "
                                 f"{problem}") from None
            delay = retry_after if retry_after is not None else min(self.backoff_s * 2 ** attempt, BACKOFF_MAX_S)
            logger.warning("judge at %s: %s; retry %d/%d in %.2f s", self.display_url, problem, attempt + 1,
                           attempts - 1, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _refusal(self, status: int, reason: str, detail: str) -> str:
        hint = ""
        if status in (401, 403):
            state = "is set" if self._key() else "is NOT set"
            hint = f" (check the key in ${self.config.api_key_env}, which {state})"
        elif status == 404:
            hint = " (check benchmark.judge.url, usually ending in /v1, and benchmark.judge.model)"
        elif 300 <= status < 400:
            hint = " (redirects are not followed; set benchmark.judge.url to the final address)"
        message = f"judge at {self.display_url} refused the request: HTTP {status} {reason}".rstrip() + hint
        return f"{message}: {detail}" if detail else message

    @staticmethod
    def _excerpt(exc: urllib.error.HTTPError, key: Optional[str]) -> str:
        try:
            text = exc.read().decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the body is only a hint
            return ""
        return _excerpt(text, key)

    def _reply_text(self, raw: bytes, key: Optional[str]) -> str:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            excerpt = _excerpt(raw.decode("utf-8", "replace"), key)
            raise MalformedReply(f"judge at {self.display_url} answered without a chat completion: "
                                 f"{excerpt!r}") from None
        if isinstance(content, list):  # content parts: [{"type": "text", "text": …}, …]
            content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
        if not isinstance(content, str):
            raise MalformedReply(f"judge at {self.display_url} answered with a non-text message content")
        return _scrub(content, key)


# ---------------------------------------------------------------------------------------------------- cache


def cache_key(model: str, messages: Sequence[Mapping[str, str]], temperature: float) -> str:
    """sha256 of the model, the prompt (all messages) and the temperature."""
    payload = json.dumps({"model": model, "messages": list(messages), "temperature": float(temperature)},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Judge replies on disk, one JSON file per key (``<root>/<key[:2]>/<key>.json``), written atomically.

    ``root`` None = no cache. An unreadable entry is a miss (and is rewritten), never an error.
    """

    def __init__(self, root: Optional[str | Path]):
        self.root = Path(root) if root is not None else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[dict[str, Any]]:
        if self.root is None:
            return None
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("judge cache: ignoring unreadable %s (%s)", path, exc)
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("reply"), str) else None

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        if self.root is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(dict(entry), handle, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# ---------------------------------------------------------------------------------------------------- judging


@dataclass
class JudgedRow:
    """One row's judgement: both scores, or an ``error`` saying why there are none."""

    question_id: Any
    category: str
    reference_score: Optional[float]
    candidate_score: Optional[float]
    review: Optional[str]
    error: Optional[str]
    cached: bool

    def as_dict(self) -> dict[str, Any]:
        return {"question_id": self.question_id, "category": self.category,
                "judge_reference_score": self.reference_score, "judge_candidate_score": self.candidate_score,
                "judge_review": self.review, "judge_error": self.error, "judge_cached": self.cached}


_REQUIRED = ("question_id", "category", "ground_truth", "answer")


def _check_row(row: Mapping[str, Any], index: int) -> None:
    missing = [key for key in _REQUIRED if key not in row]
    if not ("question" in row or "text" in row):
        missing.append("question|text")
    if missing:
        raise ValueError(f"judge row {index} (question_id={row.get('question_id')!r}) lacks {missing}")


def summarize(results: Iterable[JudgedRow]) -> dict[str, dict[str, Any]]:
    """Per category, and ``all``: ``count`` (rows scored), ``failures``, mean ``candidate`` and ``reference``
    scores, and ``relative`` = mean(candidate) / mean(reference) × 100 (None where undefined)."""
    groups: dict[str, list[JudgedRow]] = defaultdict(list)
    for result in results:
        groups[result.category].append(result)
        groups["all"].append(result)
    summary = {}
    for name in sorted(groups, key=lambda n: (n == "all", n)):
        scored = [r for r in groups[name] if r.error is None]
        candidate = sum(r.candidate_score for r in scored) / len(scored) if scored else None  # type: ignore[misc]
        reference = sum(r.reference_score for r in scored) / len(scored) if scored else None  # type: ignore[misc]
        relative = candidate / reference * 100.0 if candidate is not None and reference else None
        summary[name] = {"count": len(scored), "failures": len(groups[name]) - len(scored),
                         "candidate": candidate, "reference": reference, "relative": relative}
    return summary


def flat_metrics(summary: Mapping[str, Mapping[str, Any]], prefix: str = "judge") -> dict[str, float]:
    """``{judge_<category>_<stat>: value}`` for MLflow (``eval/<benchmark>/…``); undefined means left out."""
    return {f"{prefix}_{name}_{stat}": float(value)
            for name, stats in summary.items() for stat, value in stats.items() if value is not None}


def judge_answers(rows: Sequence[Mapping[str, Any]], config: JudgeConfig, *,
                  client: Optional[JudgeClient] = None) -> dict[str, Any]:
    """Score each row's ``answer`` against its ``ground_truth`` with the judge.

    ``rows`` carry ``question_id``, ``category``, ``question`` (or ``text``), ``ground_truth`` and ``answer``,
    and optionally ``context`` (a description of the image for the judge). Every row given is judged; pick the
    open-ended ones with :data:`JUDGE_CATEGORIES`. Returns ``{"categories": summarize(...), "metrics":
    flat_metrics(...), "rows": [per-row dicts to merge into the predictions file], "sent": rows sent to the
    judge, "cached": rows answered from the cache}``.

    A reply without two parsable scores, or a 200 without a completion, is a failure of that row (counted,
    logged, left out of the means). An unreachable judge or a refused request raises :class:`JudgeError`;
    replies received before it stay cached, so a re-run resumes where it stopped.
    """
    for index, row in enumerate(rows):
        _check_row(row, index)
    if config.cache_dir is not None and "${" in config.cache_dir:
        raise ConfigError("benchmark.judge.cache_dir", "holds an unresolved interpolation; compose the config "
                                                       "(rsvlm.config.compose) or set a folder")
    client = client or JudgeClient(config)
    cache = JudgeCache(config.cache_dir)
    results: list[JudgedRow] = []
    hits = 0
    for row in rows:
        messages = build_messages(str(row.get("question", row.get("text"))), str(row["ground_truth"]),
                                  str(row["answer"] if row["answer"] is not None else ""), row.get("context"))
        key = cache_key(config.model, messages, config.temperature)
        entry = cache.get(key)
        cached = entry is not None
        if entry is not None:
            hits += 1
            reply = entry["reply"]
        else:
            try:
                reply = client.complete(messages)
            except MalformedReply as exc:
                logger.warning("judge: question %s: %s", row["question_id"], exc)
                results.append(JudgedRow(row["question_id"], str(row["category"]), None, None, None, str(exc), False))
                continue
        scores = parse_scores(reply)
        if not cached:
            cache.put(key, {"model": config.model, "temperature": config.temperature, "reply": reply,
                            "scores": list(scores) if scores else None})
        error = None
        if scores is None:
            first = next((line for line in reply.splitlines() if line.strip()), "")[:120]
            error = f"no two scores in 0-10 on the reply's first line: {first!r}"
            logger.warning("judge: question %s: %s", row["question_id"], error)
        results.append(JudgedRow(row["question_id"], str(row["category"]), scores[0] if scores else None,
                                 scores[1] if scores else None, reply, error, cached))
    summary = summarize(results)
    failures = sum(1 for r in results if r.error is not None)
    logger.info("judge %s: %d row(s), %d from the cache, %d failure(s)", config.model, len(results), hits, failures)
    return {"categories": summary, "metrics": flat_metrics(summary), "rows": [r.as_dict() for r in results],
            "sent": len(results) - hits, "cached": hits}

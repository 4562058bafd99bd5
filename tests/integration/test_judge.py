"""The LLM judge against a real HTTP server on 127.0.0.1 that mimics ``/v1/chat/completions``.

The server (http.server in a thread) answers from a script first (errors, odd bodies), then with canned
reviews chosen by a marker in the question, and records every request it gets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from rsvlm.config import ConfigError
from rsvlm.config.evaluation import JudgeConfig
from rsvlm.dev.services import free_port
from rsvlm.eval.judge import (
    SYSTEM_PROMPT,
    JudgeClient,
    JudgeError,
    _retry_after_s,
    build_messages,
    cache_key,
    chat_completions_url,
    judge_answers,
    parse_scores,
)

pytestmark = pytest.mark.integration

KEY = "sk-test-SECRET-5f2a9c81d0"
ENV = "RSVLM_JUDGE_API_KEY"


def completion(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}]}).encode()


class FakeJudge:
    """State shared with the handler: scripted responses, canned replies by marker, recorded requests."""

    def __init__(self) -> None:
        self.script: deque[tuple[int, dict[str, str], bytes, float]] = deque()
        self.replies: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.url = ""

    def push(self, status: int, body: bytes | str = b"", headers: Optional[dict[str, str]] = None,
             delay_s: float = 0.0) -> None:
        self.script.append((status, headers or {}, body.encode() if isinstance(body, str) else body, delay_s))

    def respond(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes, float]:
        with self.lock:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            self.requests.append({"path": path, "headers": headers, "body": payload})
            if self.script:
                return self.script.popleft()
        if path != "/v1/chat/completions":
            return 404, {}, b'{"error": "not found"}', 0.0
        user = payload["messages"][-1]["content"]
        reply = next((text for marker, text in self.replies.items() if marker in user), "5 5\nDefault.")
        return 200, {"Content-Type": "application/json"}, completion(reply), 0.0


def make_handler(state: FakeJudge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, out, delay_s = state.respond(self.path, dict(self.headers.items()), body)
            time.sleep(delay_s)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def judge_server() -> Iterator[FakeJudge]:
    state = FakeJudge()
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def api_key(monkeypatch) -> str:
    monkeypatch.setenv(ENV, KEY)
    return KEY


def config_for(url: str, tmp_path: Path, **overrides: Any) -> JudgeConfig:
    values = {"url": url, "model": "judge-test", "cache_dir": str(tmp_path / "judge_cache"), "timeout_s": 5.0,
              "max_retries": 2}
    values.update(overrides)
    return JudgeConfig(**values)


def client_for(config: JudgeConfig, sleeps: Optional[list[float]] = None) -> JudgeClient:
    """A client whose backoff sleeps are recorded (not slept) when ``sleeps`` is given."""
    if sleeps is None:
        return JudgeClient(config, backoff_s=0.01)
    return JudgeClient(config, backoff_s=0.01, sleep=sleeps.append)


def row(qid: str, category: str = "complex_reasoning", answer: str = "A candidate answer.") -> dict[str, Any]:
    return {"question_id": qid, "category": category, "question": f"<image>\n[{qid}] Why is the port busy?",
            "ground_truth": f"Reference answer for {qid}.", "answer": answer}


ROWS = [row("q1"), row("q2"), row("q3", "detailed_description"), row("q4", "detailed_description")]
REPLIES = {"[q1]": "8 6\nThe second answer misses the harbour.",
           "[q2]": "Scores: 9 and 7\nBoth fine.",
           "[q3]": f"10, 5\nAssistant 2 is vague. (echo of {KEY})",
           "[q4]": "Both answers are good.\n8 8"}  # no scores on the first line: a failure


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------------ tests


def test_scores_aggregate_and_cache(judge_server, api_key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    judge_server.replies.update(REPLIES)
    config = config_for(judge_server.url, tmp_path)

    result = judge_answers(ROWS, config, client=client_for(config))

    cats = result["categories"]
    assert cats["complex_reasoning"] == {"count": 2, "failures": 0, "candidate": 6.5, "reference": 8.5,
                                         "relative": pytest.approx(6.5 / 8.5 * 100)}
    assert cats["detailed_description"] == {"count": 1, "failures": 1, "candidate": 5.0, "reference": 10.0,
                                            "relative": pytest.approx(50.0)}
    assert cats["all"] == {"count": 3, "failures": 1, "candidate": 6.0, "reference": 9.0,
                           "relative": pytest.approx(200 / 3)}
    assert list(cats) == ["complex_reasoning", "detailed_description", "all"]
    metrics = result["metrics"]
    assert metrics["judge_complex_reasoning_relative"] == pytest.approx(76.470588, rel=1e-6)
    assert metrics["judge_detailed_description_failures"] == 1.0
    assert metrics["judge_all_count"] == 3.0
    assert result["sent"] == 4 and result["cached"] == 0

    by_id = {r["question_id"]: r for r in result["rows"]}
    assert (by_id["q1"]["judge_reference_score"], by_id["q1"]["judge_candidate_score"]) == (8.0, 6.0)
    assert by_id["q1"]["judge_error"] is None and by_id["q1"]["judge_review"].startswith("8 6")
    assert by_id["q4"]["judge_candidate_score"] is None and by_id["q4"]["judge_reference_score"] is None
    assert "first line" in by_id["q4"]["judge_error"]
    assert KEY not in by_id["q3"]["judge_review"] and "***" in by_id["q3"]["judge_review"]

    # What the judge received: the key as a bearer token, the LLaVA-Bench prompt, reference before candidate.
    assert len(judge_server.requests) == 4
    for request in judge_server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["Authorization"] == f"Bearer {KEY}"
        body = request["body"]
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-test", 0.0, 256)
        assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    user = judge_server.requests[0]["body"]["messages"][1]["content"]
    assert "<image>" not in user and "[q1] Why is the port busy?" in user
    assert user.index("Reference answer for q1.") < user.index("A candidate answer.") < user.index("[System]")

    # A re-run is served from the cache: no request, same numbers.
    again = judge_answers(ROWS, config, client=client_for(config))
    assert len(judge_server.requests) == 4
    assert again["categories"] == result["categories"]
    assert again["sent"] == 0 and again["cached"] == 4
    assert all(r["judge_cached"] for r in again["rows"])

    # Another judge model is another judgement.
    judge_answers(ROWS[:1], config_for(judge_server.url, tmp_path, model="judge-other"))
    assert len(judge_server.requests) == 5

    files = cache_files(tmp_path / "judge_cache")
    assert len(files) == 5 and all(p.suffix == ".json" for p in files)  # no temp files left behind
    for path in files:
        assert KEY not in path.read_text()
    key = cache_key("judge-test", build_messages(ROWS[0]["question"], ROWS[0]["ground_truth"], ROWS[0]["answer"]),
                    0.0)
    entry = json.loads((tmp_path / "judge_cache" / key[:2] / f"{key}.json").read_text())
    assert entry == {"model": "judge-test", "temperature": 0.0, "reply": REPLIES["[q1]"], "scores": [8.0, 6.0]}
    assert KEY not in caplog.text


def test_retries_a_500_then_succeeds(judge_server, api_key, tmp_path):
    judge_server.replies.update(REPLIES)
    judge_server.push(500, f"internal error ({KEY})")
    sleeps: list[float] = []
    config = config_for(judge_server.url, tmp_path)
    result = judge_answers(ROWS[:1], config, client=client_for(config, sleeps))
    assert len(judge_server.requests) == 2
    assert sleeps == [0.01]  # exponential backoff: backoff_s × 2^0
    assert result["categories"]["complex_reasoning"]["candidate"] == 6.0


def test_429_honours_retry_after(judge_server, api_key, tmp_path, caplog):
    judge_server.replies.update(REPLIES)
    judge_server.push(429, '{"error": "rate limited"}', {"Retry-After": "1"})
    judge_server.push(503, "busy")
    sleeps: list[float] = []
    config = config_for(judge_server.url, tmp_path)
    with caplog.at_level(logging.WARNING, logger="rsvlm.eval.judge"):
        result = judge_answers(ROWS[1:2], config, client=client_for(config, sleeps))
    assert sleeps == [1.0, 0.02]  # Retry-After, then backoff_s × 2^1
    assert len(judge_server.requests) == 3
    assert result["categories"]["all"]["reference"] == 9.0
    assert "HTTP 429" in caplog.text and "127.0.0.1" in caplog.text


def test_429_retry_after_really_waits(judge_server, api_key, tmp_path):
    judge_server.push(429, "slow down", {"Retry-After": "1"})
    config = config_for(judge_server.url, tmp_path)
    start = time.monotonic()
    judge_answers(ROWS[:1], config, client=client_for(config))
    assert time.monotonic() - start >= 0.9
    assert len(judge_server.requests) == 2


def test_401_fails_at_once_with_a_clear_error(judge_server, api_key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    judge_server.push(401, json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    config = config_for(judge_server.url, tmp_path)
    with pytest.raises(JudgeError) as info:
        judge_answers(ROWS, config, client=client_for(config))
    message = str(info.value)
    assert "HTTP 401" in message and f"{judge_server.url}/chat/completions" in message
    assert f"${ENV}" in message and "is set" in message
    assert KEY not in message and KEY not in repr(info.value) and KEY not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no urllib traceback attached
    assert len(judge_server.requests) == 1  # no retry
    assert not (tmp_path / "judge_cache").exists() or not cache_files(tmp_path / "judge_cache")


def test_404_names_the_url(judge_server, api_key, tmp_path):
    config = config_for(judge_server.url.replace("/v1", "/v2"), tmp_path)
    with pytest.raises(JudgeError, match=r"/v2/chat/completions refused the request: HTTP 404.*benchmark\.judge\.url"):
        judge_answers(ROWS[:1], config, client=client_for(config))
    assert len(judge_server.requests) == 1


def test_malformed_replies_are_counted_failures(judge_server, api_key, tmp_path, caplog):
    judge_server.replies.update(REPLIES)
    judge_server.push(200, "<html>gateway page</html>", {"Content-Type": "text/html"})
    judge_server.push(200, '{"choices": []}', {"Content-Type": "application/json"})
    config = config_for(judge_server.url, tmp_path)
    with caplog.at_level(logging.WARNING, logger="rsvlm.eval.judge"):
        result = judge_answers(ROWS[:3], config, client=client_for(config))
    complex_ = result["categories"]["complex_reasoning"]
    assert (complex_["count"], complex_["failures"], complex_["candidate"]) == (0, 2, None)
    assert complex_["relative"] is None and "judge_complex_reasoning_relative" not in result["metrics"]
    assert result["categories"]["all"] == {"count": 1, "failures": 2, "candidate": 5.0, "reference": 10.0,
                                           "relative": pytest.approx(50.0)}
    errors = [r["judge_error"] for r in result["rows"][:2]]
    assert all("without a chat completion" in e for e in errors)
    assert "q1" in caplog.text and "q2" in caplog.text
    # A malformed reply is not cached: the next run asks again (and now gets real reviews).
    again = judge_answers(ROWS[:3], config, client=client_for(config))
    assert again["sent"] == 2 and again["cached"] == 1
    assert again["categories"]["complex_reasoning"]["count"] == 2


def test_gives_up_after_max_retries(judge_server, api_key, tmp_path):
    for _ in range(3):
        judge_server.push(503, "overloaded")
    sleeps: list[float] = []
    config = config_for(judge_server.url, tmp_path, max_retries=2)
    with pytest.raises(JudgeError, match=r"did not answer after 3 attempt\(s\): HTTP 503"):
        judge_answers(ROWS[:1], config, client=client_for(config, sleeps))
    assert len(judge_server.requests) == 3 and sleeps == [0.01, 0.02]


def test_timeout_is_retried(judge_server, api_key, tmp_path):
    judge_server.replies.update(REPLIES)
    judge_server.push(200, completion("1 1"), {"Content-Type": "application/json"}, delay_s=1.5)
    config = config_for(judge_server.url, tmp_path, timeout_s=0.3)
    result = judge_answers(ROWS[:1], config, client=client_for(config))
    assert len(judge_server.requests) == 2
    assert result["rows"][0]["judge_candidate_score"] == 6.0  # the second answer, not the late "1 1"


def test_connection_refused_is_retried_then_reported(api_key, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    sleeps: list[float] = []
    config = config_for(url, tmp_path, max_retries=1)
    with pytest.raises(JudgeError, match=r"did not answer after 2 attempt\(s\)") as info:
        judge_answers(ROWS[:1], config, client=client_for(config, sleeps))
    assert "Connection" in str(info.value) and sleeps == [0.01]


def test_no_authorization_header_without_a_key(judge_server, monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    config = config_for(judge_server.url, tmp_path)
    judge_answers(ROWS[:1], config)
    assert "Authorization" not in judge_server.requests[0]["headers"]


def test_bad_rows_and_missing_url(tmp_path):
    config = config_for("http://127.0.0.1:1/v1", tmp_path)
    bad = dict(ROWS[0])
    del bad["answer"]
    with pytest.raises(ValueError, match=r"row 1 \(question_id='q1'\) lacks \['answer'\]"):
        judge_answers([ROWS[1], bad], config)
    with pytest.raises(ConfigError, match="benchmark.judge.url"):
        judge_answers(ROWS, JudgeConfig(cache_dir=None))
    with pytest.raises(ConfigError, match="benchmark.judge.cache_dir"):
        judge_answers(ROWS, JudgeConfig(url="http://127.0.0.1:1/v1"))


@pytest.mark.parametrize("review, expected", [
    ("8 6\nbecause", (8.0, 6.0)),
    ("8, 6", (8.0, 6.0)),
    ("Scores: 8 and 6", (8.0, 6.0)),
    ("**7 9**", (7.0, 9.0)),
    ("\n  10 4.5\n", (10.0, 4.5)),
    ("Assistant 1: 8/10, Assistant 2: 6/10", (8.0, 6.0)),
    ("9 out of 10, 3 out of 10", (9.0, 3.0)),
    ("(8, 6)", (8.0, 6.0)),
    ("Both are good.\n8 8", None),
    ("8", None),
    ("8 6 4", None),
    ("12 6", None),
    ("", None),
])
def test_parse_scores(review, expected):
    assert parse_scores(review) == expected


def test_retry_after_and_url_helpers():
    assert _retry_after_s("3") == 3.0
    assert _retry_after_s("-1") == 0.0
    assert _retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now
    assert _retry_after_s("soon") is None and _retry_after_s(None) is None
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_config_validation_never_echoes_secrets(compose_job):
    with pytest.raises(ConfigError, match="benchmark.judge.url") as info:
        JudgeConfig(url="http://user:hunter2secret@judge.example/v1")
    assert "hunter2secret" not in str(info.value)
    with pytest.raises(ConfigError, match="benchmark.judge.api_key_env") as info:
        JudgeConfig(api_key_env=KEY)
    assert KEY not in str(info.value)
    with pytest.raises(ConfigError, match="benchmark.judge.url"):
        JudgeConfig(url="judge.example/v1")
    with pytest.raises(ConfigError, match="benchmark.judge.timeout_s"):
        compose_job("benchmark.judge.timeout_s=0")
    job = compose_job("benchmark.judge.url=http://127.0.0.1:8000/v1", "benchmark.judge.model=qwen2-vl-judge")
    assert (job.benchmark.judge.url, job.benchmark.judge.model) == ("http://127.0.0.1:8000/v1", "qwen2-vl-judge")
    assert job.benchmark.judge.cache_dir == f"{job.workdir}/judge_cache"

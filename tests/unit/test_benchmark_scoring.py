"""Scoring an existing answer file (`evaluate predictions=`): the file is joined to the benchmark's own questions
and scored only on the benchmark's ground truth. No services, no Ray (tracking=off)."""

from __future__ import annotations

import json

import pytest

from rsvlm.errors import JobError
from rsvlm.eval.benchmark import join_answers, read_answers
from rsvlm.eval.evaluate import evaluate_predictions

# An RSVQA-style benchmark: 4 presence questions, 4 count questions.
VQA_QUESTIONS = [
    {"question_id": i, "image": f"{i}.png", "text": f"question {i}?", "category": category, "ground_truth": truth}
    for i, (category, truth) in enumerate([("presence", "yes"), ("presence", "no"), ("presence", "yes"),
                                           ("presence", "no"), ("count", "1"), ("count", "2"), ("count", "3"),
                                           ("count", "4")], start=1)
]
# FIT-RSRC-style CircularEval: question 1 asked in 4 rotations of its options (one row each, same id and
# category, different text and letter), question 2 in 2.
CIRCULAR_QUESTIONS = (
    [{"question_id": 1, "image": "a.png", "text": f"Where is the ship? rotation {k}", "category": "relation",
      "ground_truth": letter} for k, letter in enumerate("BADC")]
    + [{"question_id": 2, "image": "b.png", "text": f"Where is the plane? rotation {k}", "category": "relation",
        "ground_truth": letter} for k, letter in enumerate("CB")]
)


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _score(tmp_path, compose_job, questions, answers, *overrides, benchmark="rsvqa_lr"):
    bench = _write(tmp_path / "questions.jsonl", questions)
    answer_file = _write(tmp_path / "answers.jsonl", answers)
    job = compose_job(f"benchmark={benchmark}", f"benchmark.questions={bench}", f"benchmark.predictions={answer_file}",
                      "tracking=off", *overrides)
    return evaluate_predictions(job)


def _answer(row, answer, **extra):
    return {"question_id": row["question_id"], "category": row["category"], "answer": answer,
            "ground_truth": row["ground_truth"], **extra}


# ------------------------------------------------------------------------------------- the four reproductions


def test_an_answer_file_with_only_its_correct_rows_is_not_a_perfect_score(tmp_path, compose_job):
    """Before: the file was scored on its own rows, so dropping the wrong ones gave 1.0."""
    right = [_answer(q, q["ground_truth"]) for q in VQA_QUESTIONS[:3]]
    evaluation = _score(tmp_path, compose_job, VQA_QUESTIONS, right)
    assert evaluation.metrics["OA"] == pytest.approx(3 / 8)
    assert evaluation.metrics["presence_accuracy"] == pytest.approx(3 / 4)
    assert evaluation.metrics["count_accuracy"] == 0.0
    assert evaluation.metrics["missing_answers"] == 5
    written = [json.loads(line) for line in evaluation.predictions_path.read_text().splitlines()]
    assert [row["question_id"] for row in written] == [q["question_id"] for q in VQA_QUESTIONS]
    assert [row.get("missing", False) for row in written] == [False] * 3 + [True] * 5
    assert json.loads(evaluation.metrics_path.read_text())["missing_answers"] == 5


def test_a_row_repeated_1000_times_is_refused_with_file_and_line(tmp_path, compose_job):
    """Before: one right row repeated 1000× (the other 7 wrong) scored 0.873 on presence."""
    answers = [_answer(VQA_QUESTIONS[0], "yes")] * 1000 + [_answer(q, "maybe") for q in VQA_QUESTIONS[1:]]
    with pytest.raises(JobError, match=r"answers\.jsonl:2: question_id 1 \(category 'presence'\) is answered again "
                                       r"\(already at line 1\)"):
        _score(tmp_path, compose_job, VQA_QUESTIONS, answers)


def test_an_id_the_benchmark_does_not_have_is_refused_with_file_and_line(tmp_path, compose_job):
    """Before: any id was accepted and scored against the ground truth written beside it."""
    answers = [_answer(q, q["ground_truth"]) for q in VQA_QUESTIONS]
    answers.insert(2, {"question_id": 99, "category": "presence", "answer": "yes", "ground_truth": "yes"})
    with pytest.raises(JobError) as caught:
        _score(tmp_path, compose_job, VQA_QUESTIONS, answers)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'answers.jsonl'}:3: question_id 99 (category 'presence') is not in "
                              f"the benchmark {tmp_path / 'questions.jsonl'}")
    assert "\n" not in message
    # An id the benchmark has, in a category it does not have it in, is refused too, naming its category.
    answers = [_answer(VQA_QUESTIONS[0], "yes", category="count")]
    with pytest.raises(JobError, match=r"answers\.jsonl:1: question_id 1 \(category 'count'\) is not in the "
                                       r"benchmark .*there its category is 'presence'"):
        _score(tmp_path, compose_job, VQA_QUESTIONS, answers)


def test_answers_copied_from_a_doctored_ground_truth_score_against_the_benchmarks(tmp_path, compose_job, caplog):
    """Before: `answer` copied from the file's own (wrong) `ground_truth` gave 1.0 everywhere."""
    flipped = {"yes": "no", "no": "yes", "1": "0", "2": "0", "3": "0", "4": "0"}
    doctored = [{**_answer(q, flipped[q["ground_truth"]]), "ground_truth": flipped[q["ground_truth"]]}
                for q in VQA_QUESTIONS]
    with caplog.at_level("WARNING"):
        evaluation = _score(tmp_path, compose_job, VQA_QUESTIONS, doctored)
    assert evaluation.metrics["OA"] == 0.0 and evaluation.metrics["AA"] == 0.0
    assert "8 answer rows carry a ground_truth that differs from the benchmark's; it is ignored" in caplog.text
    written = [json.loads(line) for line in evaluation.predictions_path.read_text().splitlines()]
    assert [row["ground_truth"] for row in written] == [q["ground_truth"] for q in VQA_QUESTIONS]

    # The same on CircularEval: letters copied from doctored ground truths.
    doctored = [{**_answer(q, "A"), "ground_truth": "A"} for q in CIRCULAR_QUESTIONS]
    evaluation = _score(tmp_path, compose_job, CIRCULAR_QUESTIONS, doctored, benchmark="fitrsrc")
    assert evaluation.metrics["overall"] == 0.0  # "A" is right in one rotation of question 1 only


# ---------------------------------------------------------------------------------------------- the join


def test_missing_answers_count_as_wrong_and_are_reported(tmp_path, compose_job, caplog):
    answers = [_answer(q, q["ground_truth"]) for q in VQA_QUESTIONS if q["question_id"] != 5]
    with caplog.at_level("WARNING"):
        evaluation = _score(tmp_path, compose_job, VQA_QUESTIONS, answers)
    assert evaluation.metrics["count_accuracy"] == pytest.approx(3 / 4)
    assert evaluation.metrics["OA"] == pytest.approx(7 / 8)
    assert evaluation.metrics["missing_answers"] == 1
    assert "1 of 8 questions" in caplog.text and "scored as wrong" in caplog.text


def test_circular_rotations_join_by_text_or_else_by_order(tmp_path, compose_job):
    """Rotations share (category, question_id): a row's question text picks its rotation; without the text the
    rows go to the rotations in the benchmark's order."""
    by_order = [_answer(q, q["ground_truth"]) for q in CIRCULAR_QUESTIONS]
    assert _score(tmp_path, compose_job, CIRCULAR_QUESTIONS, by_order, benchmark="fitrsrc").metrics["overall"] == 1.0
    # Reversed rows with their texts still join to the right rotation.
    by_text = [_answer(q, q["ground_truth"], question=q["text"]) for q in reversed(CIRCULAR_QUESTIONS)]
    assert _score(tmp_path, compose_job, CIRCULAR_QUESTIONS, by_text, benchmark="fitrsrc").metrics["overall"] == 1.0
    # One rotation of question 1 unanswered: question 1 is wrong (CircularEval needs every rotation).
    evaluation = _score(tmp_path, compose_job, CIRCULAR_QUESTIONS, by_text[1:], benchmark="fitrsrc")
    assert evaluation.metrics["overall"] == 0.5 and evaluation.metrics["missing_answers"] == 1
    # A fifth answer to a question with four rotations is a duplicate.
    extra = by_order[:4] + [_answer(CIRCULAR_QUESTIONS[0], "B")] + by_order[4:]
    with pytest.raises(JobError, match=r"answers\.jsonl:5: question_id 1 \(category 'relation'\) is answered again "
                                       r"\(already at line 1, 2, 3, 4\); the benchmark has 4 rows"):
        _score(tmp_path, compose_job, CIRCULAR_QUESTIONS, extra, benchmark="fitrsrc")
    # The same rotation named twice by its text.
    twice = [_answer(CIRCULAR_QUESTIONS[1], "A", question=CIRCULAR_QUESTIONS[1]["text"])] * 2
    with pytest.raises(JobError, match=r"answers\.jsonl:2: .* \(already at line 1\)"):
        _score(tmp_path, compose_job, CIRCULAR_QUESTIONS, twice, benchmark="fitrsrc")


def test_the_limit_scores_the_same_questions_a_model_evaluation_answers(tmp_path, compose_job):
    answers = [_answer(q, q["ground_truth"]) for q in VQA_QUESTIONS if q["question_id"] != 2]
    evaluation = _score(tmp_path, compose_job, VQA_QUESTIONS, answers, "benchmark.limit=3")
    # Questions 1–3 are scored (2 unanswered); answers to 4–8 are known ids, neither refused nor scored.
    assert evaluation.metrics["OA"] == pytest.approx(2 / 3)
    assert evaluation.metrics["missing_answers"] == 1
    assert len(evaluation.predictions_path.read_text().splitlines()) == 3


def test_join_answers_keys_on_category_and_id_and_reads_only_the_answer():
    questions = [{"question_id": 1, "category": "presence", "text": "q", "ground_truth": "yes"},
                 {"question_id": 1, "category": "count", "text": "q", "ground_truth": "2"},  # ids restart per category
                 {"question_id": 2, "category": "count", "text": "r", "ground_truth": "3"}]
    answers = read_answers("\n".join(json.dumps(row) for row in [
        {"question_id": "1", "category": "count", "answer": "2", "ground_truth": "7", "question": "other"},
        {"question_id": 2, "answer": "3"},  # no category: id 2 is in one category only
    ]), "a.jsonl")
    joined = join_answers(questions, answers, "a.jsonl", "q.jsonl")
    assert [(r["category"], r["answer"], r["ground_truth"]) for r in joined.rows] == [
        ("presence", "", "yes"), ("count", "2", "2"), ("count", "3", "3")]
    assert (joined.missing, joined.beyond_limit, joined.ground_truth_differs) == (1, 0, 1)
    with pytest.raises(JobError, match=r"a\.jsonl:1: question_id 1 is in several categories .*presence, count"):
        join_answers(questions, read_answers('{"question_id": 1, "answer": "x"}', "a.jsonl"), "a.jsonl", "q.jsonl")


def test_answer_file_mistakes_are_one_line_job_errors_naming_file_and_line():
    with pytest.raises(JobError, match=r"^a\.jsonl:2: answer row lacks \['answer'\] \("):
        read_answers('{"question_id": 1, "answer": "x"}\n{"question_id": 2}\n', "a.jsonl")
    with pytest.raises(JobError, match=r"^a\.jsonl:1: invalid JSON"):
        read_answers("{nope\n", "a.jsonl")
    with pytest.raises(JobError, match=r"^a\.jsonl: no answers to score"):
        read_answers("\n", "a.jsonl")

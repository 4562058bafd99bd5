"""Tests for the public-format adapters: detection, records per format, and line-level error reporting.

Fixtures follow the public formats field by field: the files under ``tests/fixtures/formats/`` are copies of
the synthetic samples written from the SkySenseGPT / ImageRAG evaluation code; the inline rows use the same
field names (``question_id, image, text|question, category, ground_truth``; RSVQA ``questions`` /
``answers``; LLaVA ``id, image, conversations``). Every record produced must pass ``check_record``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rsvlm.config.data import DataFormat
from rsvlm.data.formats import detect_format, infer_task, parse_records
from rsvlm.data.records import Record, RecordError, check_record

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
FITRSFG = "FIT-RSFG_complex_comprehension_example.SYNTHETIC.jsonl"
FITRSRC = "FIT-RSRC_question_example.SYNTHETIC.jsonl"
LLAVA = "llava_conversation_example.SYNTHETIC.json"
RSVQA_Q = "RSVQA_questions_shape.SYNTHETIC.json"
RSVQA_A = "RSVQA_answers_shape.SYNTHETIC.json"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def jsonl(*rows: object) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def records(text: str, name: str, fmt: DataFormat, **kwargs) -> list[tuple[str, Record]]:
    """Every produced record, each validated by ``check_record`` (which raises on any problem)."""
    return [(where, check_record(raw, name, where, "test")) for where, raw in parse_records(text, name, fmt, **kwargs)]


def conv(record_id: str, question: str, answer: str = "ok", image: str | None = "a.png", **extra) -> dict:
    human = f"<image>\n{question}" if image else question
    return {"id": record_id, "image": image, "conversations": [{"from": "human", "value": human},
                                                              {"from": "gpt", "value": answer}], **extra}


# ---------------------------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("name,expected", [
    (FITRSFG, DataFormat.fitrs),
    (FITRSRC, DataFormat.fitrs),
    (LLAVA, DataFormat.llava),
    (RSVQA_Q, DataFormat.rsvqa),
])
def test_detect_fixture_formats(name: str, expected: DataFormat) -> None:
    assert detect_format(fixture(name), name) is expected


def test_detect_geochat_by_prefix_in_first_records() -> None:
    rows = [conv("g0", "What is in the image?"), conv("g1", "[refer] give me the location of the ship")]
    assert detect_format(json.dumps(rows), "geochat.json") is DataFormat.geochat
    assert detect_format(jsonl(*rows), "geochat.jsonl") is DataFormat.geochat
    # [detection] alone is FIT-RS's prefix too: plain LLaVA-shaped.
    assert detect_format(jsonl(conv("d0", "[detection]Detect all ships.")), "x.jsonl") is DataFormat.llava


def test_detect_jsonl_skips_bad_lines_and_one_line_files() -> None:
    assert detect_format(jsonl("{oops", conv("a", "Q")), "x.jsonl") is DataFormat.llava
    assert detect_format(json.dumps(conv("a", "Q")), "one.jsonl") is DataFormat.llava


def test_detect_unparseable_list_by_keys_so_parse_can_report_the_position() -> None:
    text = '[\n {"id": "a", "image": "a.png",\n  "conversations": [] oops}\n]'
    assert detect_format(text, "broken.json") is DataFormat.llava
    with pytest.raises(RecordError) as caught:
        list(parse_records(text, "broken.json", DataFormat.llava))
    assert caught.value.where.startswith("3:") and caught.value.reason.startswith("invalid JSON: ")
    assert str(caught.value).startswith("broken.json:3:")


@pytest.mark.parametrize("text", ['{"foo": 1}', '[{"question_id": 1, "text": "Q"}]', "[1, 2]", "   "])
def test_detect_unknown_names_the_file(text: str) -> None:
    with pytest.raises(ValueError, match="mystery.json"):
        detect_format(text, "mystery.json")


def test_detect_rsvqa_answers_file_given_as_source_says_so() -> None:
    with pytest.raises(ValueError, match="answers"):
        detect_format(fixture(RSVQA_A), RSVQA_A)


def test_parse_auto_detects() -> None:
    assert [r.id for _, r in records(fixture(LLAVA), LLAVA, DataFormat.auto)] == ["fit_0"]


# ---------------------------------------------------------------------------------------------------- llava

def test_llava_list_passes_through_with_inferred_task() -> None:
    ((where, record),) = records(fixture(LLAVA), LLAVA, DataFormat.llava)
    assert where == "item 0"
    assert record.id == "fit_0" and record.image == "0000__512__0___0.png"
    assert [t["from"] for t in record.conversations] == ["human", "gpt"]
    assert record.conversations[0]["value"].startswith("<image>\n[detection]")
    assert record.conversations[1]["value"].startswith("There are 2 ships in the image: <rbox>(")
    assert record.task == "detection"


def test_llava_jsonl_keeps_own_task_and_extra_keys() -> None:
    text = jsonl(conv("a", "Describe the image.", task="my_task", dataset="UCM"), conv("b", "How many cars?"),
                 conv("c", "hello", image=None))
    got = records(text, "x.jsonl", DataFormat.llava)
    assert [(w, r.id, r.task) for w, r in got] == [("1", "a", "my_task"), ("2", "b", "vqa_count"),
                                                   ("3", "c", "conversation")]
    assert got[0][1].meta == {"dataset": "UCM"} and got[2][1].image is None


def test_llava_bad_json_line_is_reported_and_later_lines_still_parse() -> None:
    text = jsonl(conv("a", "Q1"), '{"id": "b", oops}', "", conv("c", "Q3"))
    produced = list(parse_records(text, "x.jsonl", DataFormat.llava))
    assert [where for where, _ in produced] == ["1", "2", "4"]
    error = produced[1][1]
    assert isinstance(error, RecordError)
    assert error.where == "2:13" and error.record_id is None and error.reason.startswith("invalid JSON: ")
    assert str(error) == f"x.jsonl:2:13: id=?: {error.reason}"
    assert [check_record(raw, "x.jsonl", w, "t").id for w, raw in produced if not isinstance(raw, RecordError)] \
        == ["a", "c"]


def test_malformed_record_is_passed_on_for_check_record_to_name() -> None:
    ((where, raw),) = parse_records(jsonl({"id": "z", "image": "a.png", "conversations": "nope"}), "x.jsonl",
                                    DataFormat.llava)
    with pytest.raises(RecordError, match="'conversations' must be a non-empty list"):
        check_record(raw, "x.jsonl", where, "t")


# ---------------------------------------------------------------------------------------------------- geochat

def test_geochat_prefix_tasks() -> None:
    rows = [
        conv("g1", "[grounding] Describe the image in detail with boxes.", "A plane {<10><20><30><40>|<0>}"),
        conv("g2", "[refer] give me the location of <p>the plane</p>", "{<10><20><30><40>|<5>}"),
        conv("g3", "[identify] What is the object present at {<10><20><30><40>|<0>}", "A tennis court."),
        conv("g4", "[detection] Detect all planes.", "{<10><20><30><40>|<0>}"),
        conv("g5", "Is there a river?", "No."),
        conv("g6", "Write a caption for this image.", "Farmland."),
    ]
    got = records(json.dumps(rows), "geochat.json", DataFormat.geochat)
    assert [(w, r.id, r.task) for w, r in got] == [
        ("item 0", "g1", "grounding"), ("item 1", "g2", "referring"), ("item 2", "g3", "region_caption"),
        ("item 3", "g4", "detection"), ("item 4", "g5", "vqa_presence"), ("item 5", "g6", "caption"),
    ]
    assert got[1][1].conversations == rows[1]["conversations"]


# ---------------------------------------------------------------------------------------------------- fitrs

def test_fitrs_fg_question_rows() -> None:
    got = records(fixture(FITRSFG), FITRSFG, DataFormat.fitrs)
    assert [(w, r.id, r.image, r.task) for w, r in got] == [
        ("1", "0", "0000__512__0___0.png", "detection"),
        ("2", "1", "0000__512__0___0.png", "relation_detection"),
    ]
    first = got[0][1]
    assert first.conversations == [
        {"from": "human", "value": "<image>\n[detection]Detect all the ships in the image and output their locations."},
        {"from": "gpt", "value": "There are 2 ships in the image: <rbox>({<20.00><20.00><10.00><5.00>|<30>}, "
                                 "{<60.00><60.00><12.00><6.00>|<45>})</rbox>"},
    ]
    assert first.meta == {"question_id": 0, "category": "task1"}


@pytest.mark.parametrize("category,task", [
    ("task3", "relation_reasoning"), ("task4", "object_reasoning"), ("task5", "region_scene_graph"),
    ("task6", "image_scene_graph"), ("Object", "relation_choice"), ("exist", "relation_choice"),
    ("scene", "scene"),
])
def test_fitrs_category_tasks(category: str, task: str) -> None:
    row = {"question_id": 7, "image": "t.png", "category": category, "question": "Q?", "ground_truth": "A"}
    ((_, record),) = records(jsonl(row), "q.jsonl", DataFormat.fitrs)
    assert record.task == task


def test_fitrs_rc_rotation_ids_are_unique_and_keep_the_original() -> None:
    options = ["docked alongside with", "away from", "over", "connect"]
    rows = []
    for qid in (1, 2):
        for k in range(4):
            rotated = options[k:] + options[:k]
            text = ("What is the relationship between the ship and the dock?\n"
                    + "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", rotated))
                    + "\nAnswer with the option's letter from the given choices directly.")
            rows.append({"question_id": qid, "image": "0000__512__0___0.png", "category": "relationship",
                         "text": text, "ground_truth": "ABCD"[(-k) % 4]})
    # The fixture row first: its question_id 1 shares the counter with the generated rows of question 1.
    text = fixture(FITRSRC) + jsonl(*rows)
    assert detect_format(text, FITRSRC) is DataFormat.fitrs
    got = [r for _, r in records(text, FITRSRC, DataFormat.fitrs)]
    ids = [r.id for r in got]
    assert ids == ["1-0", "1-1", "1-2", "1-3", "1-4", "2-0", "2-1", "2-2", "2-3"]
    assert len(set(ids)) == len(ids)
    assert all(r.task == "relation_choice" for r in got)
    assert got[0].meta["question_id"] == 1 and got[0].meta["rotation"] == 0 and got[5].meta["question_id"] == 2
    assert got[0].conversations[0]["value"].startswith("<image>\nWhat is the relationship")
    assert got[0].conversations[1]["value"] == "A" and got[2].conversations[1]["value"] == "D"


def test_fitrs_tool_rows_mixed_with_conversations_and_errors() -> None:
    text = jsonl(
        # SkySenseGPT Tools/process_data_*.py rows: the file names its source.
        {"id": 1, "source": "DOTA2.0", "image": "P0001.png", "question": "[detection]Detect all the planes.",
         "answer": "There is 1 plane in the image: <rbox>({<20.00><20.00><10.00><5.00>|<30>})</rbox>"},
        conv("fit_1", "[detection]Detect all ships.", "There are no ships."),  # an instruction-file record
        '{"question_id": 3, oops',
        {"question_id": 4, "image": "t.png", "category": "task1", "ground_truth": "x"},  # no question text
        {"question_id": 5, "image": "t.png", "category": "task1", "question": "Q",
         "ground_truth": "truth", "answer": "a model's answer"},
    )
    produced = list(parse_records(text, "f.jsonl", DataFormat.fitrs))
    assert [w for w, _ in produced] == ["1", "2", "3", "4", "5"]
    tool = produced[0][1]
    assert tool["source"] == "DOTA2.0"
    record = check_record(tool, "f.jsonl", "1", "caller")
    # The record names its own source (the upstream dataset); the caller's name is only the fallback.
    assert (record.id, record.image, record.task, record.source) == ("1", "P0001.png", "detection", "DOTA2.0")
    assert check_record(produced[1][1], "f.jsonl", "2", "t").task == "detection"
    assert isinstance(produced[2][1], RecordError) and produced[2][1].where.startswith("3:")
    assert isinstance(produced[3][1], RecordError) and produced[3][1].record_id == "4"
    assert "no 'text' or 'question'" in produced[3][1].reason
    # ground_truth, not a model's answer, is the label.
    assert check_record(produced[4][1], "f.jsonl", "5", "t").conversations[1]["value"] == "truth"


def test_fitrs_question_with_image_tag_is_not_doubled() -> None:
    row = {"question_id": 9, "image": "t.png", "question": "<image>\nHow many ships?", "ground_truth": "3"}
    ((_, record),) = records(jsonl(row), "q.jsonl", DataFormat.fitrs)
    assert record.conversations[0]["value"] == "<image>\nHow many ships?" and record.task == "vqa_count"


# ---------------------------------------------------------------------------------------------------- rsvqa

RSVQA_QUESTIONS = {"questions": [
    {"id": 0, "img_id": 0, "type": "presence", "question": "Is there a residential building?", "answers_ids": [0],
     "active": True},
    {"id": 1, "img_id": 0, "type": "count", "question": "How many roads are there?", "answers_ids": [1],
     "active": False},
    {"id": 2, "img_id": 3, "type": "comp", "question": "Are there more roads than water areas?",
     "answers_ids": [2], "active": True},
    {"id": 3, "img_id": 3, "type": "rural_urban", "question": "Is it a rural or an urban area?",
     "answers_ids": [99], "active": True},
    {"id": 4, "img_id": 5, "type": "count", "question": "How many buildings are there?", "answers_ids": [4],
     "active": True},
]}
RSVQA_ANSWERS = {"answers": [
    {"id": 0, "question_id": 0, "answer": "yes", "active": True},
    {"id": 1, "question_id": 1, "answer": "2", "active": False},
    {"id": 2, "question_id": 2, "answer": "no", "active": True},
    {"id": 4, "question_id": 4, "answer": "between 11 and 100", "active": True},
]}


def test_rsvqa_fixture_pair() -> None:
    ((where, record),) = records(fixture(RSVQA_Q), RSVQA_Q, DataFormat.rsvqa, companion_text=fixture(RSVQA_A))
    assert (where, record.id, record.image, record.task) == ("item 0", "0", "0.tif", "vqa_presence")
    assert record.conversations == [{"from": "human", "value": "<image>\nIs there a residential building?"},
                                    {"from": "gpt", "value": "yes"}]
    assert record.meta == {"img_id": 0, "type": "presence"}


def test_rsvqa_skips_inactive_and_names_missing_answer() -> None:
    produced = list(parse_records(json.dumps(RSVQA_QUESTIONS), "q.json", DataFormat.rsvqa,
                                  companion_text=json.dumps(RSVQA_ANSWERS),
                                  rsvqa_image_pattern="Images_LR/{img_id}.tif"))
    assert [w for w, _ in produced] == ["item 0", "item 2", "item 3", "item 4"]  # item 1 is inactive
    error = produced[2][1]
    assert isinstance(error, RecordError)
    assert error.record_id == "3" and "question 3" in error.reason and "99" in error.reason
    good = [check_record(raw, "q.json", w, "t") for w, raw in produced if not isinstance(raw, RecordError)]
    assert [(r.id, r.image, r.task, r.conversations[1]["value"]) for r in good] == [
        ("0", "Images_LR/0.tif", "vqa_presence", "yes"),
        ("2", "Images_LR/3.tif", "vqa_comp", "no"),
        ("4", "Images_LR/5.tif", "vqa_count", "between 11 and 100"),
    ]


def test_rsvqa_needs_answers_and_valid_json() -> None:
    with pytest.raises(ValueError, match="q.json.*answers"):
        list(parse_records(json.dumps(RSVQA_QUESTIONS), "q.json", DataFormat.rsvqa))
    with pytest.raises(RecordError) as caught:
        list(parse_records('{"questions": [\n oops]}', "q.json", DataFormat.rsvqa, companion_text="{}"))
    assert caught.value.where == "2:2" and caught.value.reason.startswith("invalid JSON: ")
    with pytest.raises(RecordError, match="answers file"):
        list(parse_records(json.dumps(RSVQA_QUESTIONS), "q.json", DataFormat.rsvqa, companion_text="{oops"))


# ---------------------------------------------------------------------------------------------------- infer_task

@pytest.mark.parametrize("question,task", [
    ("<image>\n[grounding] Describe the image.", "grounding"),
    ("[REFER] where is the plane", "referring"),
    ("[identify] What is the object present at {<1><2><3><4>|<0>}", "region_caption"),
    ("[detection]Detect all the ships.", "detection"),
    ("Which is it?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.",
     "multiple_choice"),
    ("Describe the image in detail.", "caption"),
    ("Please briefly describe this scene.", "caption"),
    ("Generate a short caption of the image.", "caption"),
    ("How many ships are there?", "vqa_count"),
    ("In this image, how many cars are parked?", "vqa_count"),
    ("Is there a bridge?", "vqa_presence"),
    ("<image>\nAre there any residential buildings?", "vqa_presence"),
    ("What is there near the river?", "conversation"),
    ("What might the airport be used for?", "conversation"),
    ("", "conversation"),
])
def test_infer_task(question: str, task: str) -> None:
    assert infer_task(question) == task


def test_byte_order_mark_is_ignored() -> None:
    text = "\ufeff" + fixture(LLAVA)
    assert detect_format(text, LLAVA) is DataFormat.llava
    assert [r.id for _, r in records(text, LLAVA, DataFormat.llava)] == ["fit_0"]

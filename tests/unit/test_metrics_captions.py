"""caption_scores against the COCO caption toolkit run directly, plus hand-checkable cases and input errors.

METEOR starts a JVM that loads its paraphrase table (about 4 s), so every real computation is shared
through a module fixture; the tests of logging and line breaks replace METEOR by a stub.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from rsvlm.eval.metrics import CaptionToolkitError, CaptionToolkitUnavailable, caption_scores
from rsvlm.eval.metrics import captions

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the COCO caption toolkit runs Java")

KEYS = ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"]

# Raw strings as a model and an annotator write them: case, punctuation, brackets, a number, a quote.
GOLDEN_REFS = {
    "P0001_07": [
        "A large cargo ship is moored at the pier.",
        "Two ships are docked along the harbour, next to several cranes.",
        "A harbor with a big ship and cranes.",
    ],
    "P0002_13": [
        "Many cars are parked in a parking lot near a building.",
        "A parking lot (full of cars) beside a grey building.",
    ],
    "P0003_02": [
        "A baseball field surrounded by green trees.",
        "There is a baseball diamond with trees around it.",
        "Green trees surround a baseball field.",
        "A sports field, the baseball kind, in a park.",
    ],
    "P0004_21": ["An airport with 3 airplanes parked near the terminal.", "Three planes at an airport terminal."],
    "P0005_09": ["A river crosses farmland; a bridge spans it.", "A bridge over a river between fields."],
}
GOLDEN_PREDS = {
    "P0001_07": "A big ship is docked at the harbor with cranes.",
    "P0002_13": "Lots of cars parked in a parking lot.",
    "P0003_02": 'A "baseball field" with trees around it.',
    "P0004_21": "Three airplanes are parked at the airport.",
    "P0005_09": "A bridge over a river.",
}

# Long enough that BLEU-4's n-gram counts are not smoothed away.
SENTENCES = {
    "a": "a large cargo ship is moored at the pier next to three small fishing boats",
    "b": "many white cars are parked in rows in a parking lot beside a tall office building",
}


def _toolkit_scores(refs: dict[str, list[str]], preds: dict[str, str]) -> dict[str, float]:
    """What pycocoevalcap.eval.COCOEvalCap.evaluate computes, written out with the toolkit's own classes."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({key: [{"caption": text} for text in texts] for key, texts in refs.items()})
    res = tokenizer.tokenize({key: [{"caption": preds[key]}] for key in refs})
    out: dict[str, float] = {}
    for scorer, names in [(Bleu(4), KEYS[:4]), (Meteor(), ["METEOR"]), (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]:
        score, _ = scorer.compute_score(gts, res)
        for name, value in zip(names, score if isinstance(score, list) else [score]):
            out[name] = float(value)
        del scorer  # Meteor's __del__ stops its JVM
    return out


@pytest.fixture(scope="module")
def computed() -> dict[str, dict[str, float]]:
    """Every real (Java) computation of this file, once."""
    if shutil.which("java") is None:
        pytest.skip("the COCO caption toolkit runs Java")
    jobs = {
        "ours": lambda: caption_scores(GOLDEN_REFS, GOLDEN_PREDS),
        "toolkit": lambda: _toolkit_scores(GOLDEN_REFS, GOLDEN_PREDS),
        "identical": lambda: caption_scores({k: [v] for k, v in SENTENCES.items()}, dict(SENTENCES)),
        "disjoint": lambda: caption_scores(
            {k: [v] for k, v in SENTENCES.items()},
            {"a": "red roofs; blue pools.", "b": "Snowy mountain peaks under clouds"},
        ),
    }
    # Two at a time (each METEOR JVM holds about 1.1 GB): 12 s instead of 17 s on 2 cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture
def no_meteor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip METEOR's 4-second JVM start in tests about something else (the tokenizer still runs Java)."""
    monkeypatch.setattr(captions, "_meteor", lambda gts, res: 0.0)


# ------------------------------------------------------------------------------------- golden values


@needs_java
def test_equals_the_toolkit_run_directly(computed: dict[str, dict[str, float]]) -> None:
    ours, toolkit = computed["ours"], computed["toolkit"]
    assert list(ours) == KEYS  # no SPICE offline: its CoreNLP jars are not downloaded here
    for key in KEYS:
        assert ours[key] == pytest.approx(toolkit[key], abs=1e-9, rel=0), key
    # Not a degenerate corpus: every metric is strictly between its extremes.
    assert all(0 < ours[key] < 1 for key in KEYS if key != "CIDEr") and 0 < ours["CIDEr"] < 10


@needs_java
def test_identical_prediction_scores_full_marks(computed: dict[str, dict[str, float]]) -> None:
    scores = computed["identical"]
    for n in range(1, 5):  # BLEU's smoothing constants keep it a hair under 1
        assert scores[f"BLEU_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE_L"] == pytest.approx(1.0, abs=1e-12)
    # CIDEr-D is 10 × the mean cosine of TF-IDF n-gram vectors: identical vectors give 10.
    assert scores["CIDEr"] == pytest.approx(10.0, abs=1e-9)


@needs_java
def test_disjoint_prediction_scores_zero(computed: dict[str, dict[str, float]]) -> None:
    scores = computed["disjoint"]
    assert scores["BLEU_1"] == pytest.approx(0.0, abs=1e-9)  # smoothing: not exactly 0
    assert scores["ROUGE_L"] == 0.0
    assert scores["CIDEr"] == 0.0  # (METEOR is not 0: its paraphrase table matches some word pairs)


# --------------------------------------------------------------------------------------- input errors


def test_mismatched_ids_are_named() -> None:
    named = r"references but no prediction: 'img_2'.*prediction but no references: 'img_9'"
    with pytest.raises(ValueError, match=named):
        caption_scores({"img_1": ["a ship"], "img_2": ["a car"]}, {"img_1": "a ship", "img_9": "a car"})


@pytest.mark.parametrize(
    ("refs", "preds", "message"),
    [
        ({"img_3": []}, {"img_3": "a ship"}, r"'img_3' has no reference caption"),
        ({"img_3": ["   "]}, {"img_3": "a ship"}, r"reference 0 of id 'img_3' is blank"),
        ({"img_3": "a ship"}, {"img_3": "a ship"}, r"refs\['img_3'\] must be a list.*wrap a single reference"),
        ({"img_3": ["a ship"]}, {"img_3": None}, r"prediction of id 'img_3' is NoneType"),
        ({}, {}, r"no captions"),
    ],
)
def test_bad_input_raises_value_error(refs: dict, preds: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        caption_scores(refs, preds)


def test_without_java_raises_naming_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    with pytest.raises(CaptionToolkitUnavailable, match=r"Java: `java` is not on PATH"):
        caption_scores({"a": ["a ship"]}, {"a": "a ship"})
    # Input errors come first: they need no Java.
    with pytest.raises(ValueError):
        caption_scores({"a": []}, {"a": "a ship"})


# ------------------------------------------------------------------------------------ SPICE, toolkit


@needs_java
def test_spice_absent_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture, no_meteor: None
) -> None:
    # An empty spice/lib, as on any machine that never had internet; also true of this one's real lib.
    assert captions.spice_unavailable_reason() is not None
    monkeypatch.setattr(captions, "_spice_lib_dir", lambda: tmp_path)
    monkeypatch.setattr(captions, "_spice_reason_logged", False)
    caplog.set_level(logging.WARNING, logger=captions.__name__)
    refs, preds = {"a": [SENTENCES["a"]], "b": [SENTENCES["b"]]}, {"a": SENTENCES["a"], "b": "a parking lot"}

    first, second = caption_scores(refs, preds), caption_scores(refs, preds)

    assert "SPICE" not in first and "SPICE" not in second
    records = [r for r in caplog.records if r.name == captions.__name__]
    assert len(records) == 1
    assert "without SPICE" in records[0].getMessage() and "stanford-corenlp-3.6.0.jar" in records[0].getMessage()
    with pytest.raises(CaptionToolkitUnavailable, match="stanford-corenlp-3.6.0"):
        caption_scores(refs, preds, spice=True)


@needs_java
def test_line_breaks_do_not_shift_captions_onto_other_ids(no_meteor: None) -> None:
    # Java's tokenizer ends a line at \r, \v, \f, U+2028 and U+2029; the toolkit would misalign every later id.
    refs = {"a": ["a ship at\rthe pier", "a\u2028boat"], "b": ["cars in a parking lot"], "c": ["a green field"]}
    spaced = {key: [" ".join(text.split()) for text in texts] for key, texts in refs.items()}
    preds = {"a": "a ship at the pier", "b": "cars\fin a lot", "c": "a field"}
    assert caption_scores(refs, preds) == caption_scores(spaced, {k: " ".join(v.split()) for k, v in preds.items()})


@needs_java
def test_meteor_failure_raises_with_java_output(monkeypatch: pytest.MonkeyPatch) -> None:
    import pycocoevalcap.meteor.meteor as meteor_module

    monkeypatch.setattr(meteor_module, "METEOR_JAR", "no-such-meteor.jar")
    with pytest.raises(CaptionToolkitError, match=r"METEOR .* failed.*no-such-meteor\.jar"):
        caption_scores({"a": ["a ship"]}, {"a": "a ship"}, spice=False)

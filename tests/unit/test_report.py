"""The per-evaluation HTML report: metric table, per-category bars, escaped captions, boxes drawn in colour."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from rsvlm.data.boxes import BoxConvention
from rsvlm.eval.report import IMAGES_FOLDER, SAMPLE_SIDE, write_report

GREY = (128, 128, 128)
SCRIPT = "<script>alert('x')</script>"


def row(question_id, category, answer, ground_truth, image_id=None, question="q?"):
    return {"question_id": question_id, "image_id": image_id, "question": question, "answer": answer,
            "category": category, "ground_truth": ground_truth}


def benchmark_rows():
    return [
        # grounding: one wrong (boxes apart), one right (the same rotated box); 1/2
        row("g-wrong", "grounding", "{<60><60><90><90>|<0>}", "{<10><10><40><40>|<0>}", "tile.png"),
        row("g-right", "grounding", "{<20><50><60><70>|<30>}", "{<20><50><60><70>|<30>}", "tile.png"),
        # presence: 3/4 right after normalisation; the wrong one carries markup to escape
        row("p1", "presence", "Yes.", "yes", "absent.png"),
        row("p2", "presence", "no", "no", "absent.png"),
        row("p3", "presence", '"yes"', "yes", "absent.png"),
        row("p4", "presence", "<rbox>& no", "yes", "absent.png", question=f"{SCRIPT} is there a ship?"),
        # count: 1/4 right ("two" normalises to "2")
        row("c1", "count", "two", "2"),
        row("c2", "count", "3", "2"),
        row("c3", "count", "1", "4"),
        row("c4", "count", "many", "5"),
    ]


def load_tile(image_id):
    return Image.new("RGB", (200, 100), GREY) if image_id == "tile.png" else None


def bar_heights(html, css="bar", key="category"):
    bars = re.findall(rf'<rect class="{css}" data-{key}="([^"]*)"[^>]*? y="([\d.]+)"[^>]*? height="([\d.]+)"', html)
    return {name: (float(y), float(height)) for name, y, height in bars}


def is_green(pixel):
    return pixel[1] > 200 and pixel[0] < 60 and pixel[2] < 60


def is_red(pixel):
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_report_has_metrics_bars_escaped_captions_and_drawn_boxes(tmp_path):
    rows = benchmark_rows()
    # what the mixed benchmark reports for these rows (strict exact match, accuracy@0.5)
    metrics = {"vqa_accuracy": 0.5, "vqa_aa": 0.5, "vqa_presence_accuracy": 0.75, "vqa_count_accuracy": 0.25,
               "grounding_accuracy": 0.5}
    baseline = {"blind-baseline": {"vqa_accuracy": 0.375, "only_in_baseline": 0.125}}

    path = write_report(tmp_path, title="GeoChat bench <lora> & co", metrics=metrics, rows=rows,
                        load_image=load_tile, baseline=baseline)
    assert path == tmp_path / "report.html" and path.is_file()
    assert not list(tmp_path.glob("*.partial"))
    html = path.read_text(encoding="utf-8")

    for key, value in metrics.items():
        assert f">{key}<" in html and f">{value:.4f}<" in html
    assert ">blind-baseline<" in html and ">0.3750<" in html and ">only_in_baseline<" in html
    assert 'id="metric-comparison"' in html

    # one bar per category, heights proportional to right / total: presence 3/4, grounding 1/2, count 1/4
    bars = bar_heights(html)
    assert set(bars) == {"count", "grounding", "presence"}
    heights = {name: height for name, (_, height) in bars.items()}
    assert heights["presence"] / heights["count"] == pytest.approx(3.0, rel=1e-3)
    assert heights["grounding"] / heights["count"] == pytest.approx(2.0, rel=1e-3)
    assert len({round(y + height, 2) for y, height in bars.values()}) == 1  # all bars stand on the same axis

    # every text from the data is escaped
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;rbox&gt;&amp; no" in html and "GeoChat bench &lt;lora&gt; &amp; co" in html
    assert "<lora>" not in html

    # samples: boxed rows first (wrong before right), then wrong answers, in file order
    order = [html.index(f"#{qid} \u00b7") for qid in ("g-wrong", "g-right", "p4", "c2", "c3", "c4", "p1", "p2")]
    assert order == sorted(order) and "#p3 \u00b7" not in html  # 8 samples of 10 rows

    # only the two rows with an image got a PNG; both are embedded in the HTML as well
    images = sorted(p.name for p in (tmp_path / IMAGES_FOLDER).iterdir())
    assert images == ["sample_00.png", "sample_01.png"]
    assert html.count('src="data:image/png;base64,') == 2

    drawn = Image.open(tmp_path / IMAGES_FOLDER / "sample_00.png").convert("RGB")
    width, height = drawn.size
    assert (width, height) == (SAMPLE_SIDE, SAMPLE_SIDE // 2)
    # ground truth x, y in [0.1, 0.4]: the middle of its top edge is green, its centre untouched
    assert is_green(drawn.getpixel((round(0.25 * width), round(0.1 * height))))
    assert is_green(drawn.getpixel((round(0.1 * width), round(0.25 * height))))
    assert drawn.getpixel((round(0.25 * width), round(0.25 * height))) == GREY
    # prediction x, y in [0.6, 0.9]: red edges
    assert is_red(drawn.getpixel((round(0.75 * width), round(0.6 * height))))
    assert is_red(drawn.getpixel((round(0.9 * width), round(0.75 * height))))


def test_rotated_fitrs_box_is_drawn_as_a_polygon(tmp_path):
    # A 40 % square at the centre turned 45°: a diamond whose vertices lie on the axes through the centre.
    rows = [row("r", "detection", "", "<rbox>({<50.00><50.00><40.00><40.00>|<45>})</rbox>", "square.png")]
    write_report(tmp_path, title="fitrs", metrics={}, rows=rows, box_convention=BoxConvention.fitrs,
                 load_image=lambda _: Image.new("RGB", (128, 128), GREY))
    drawn = Image.open(tmp_path / IMAGES_FOLDER / "sample_00.png").convert("RGB")
    centre, half_diagonal = SAMPLE_SIDE / 2, 0.4 * SAMPLE_SIDE / 2 ** 0.5
    assert is_green(drawn.getpixel((round(centre + half_diagonal), round(centre))))  # right vertex
    assert is_green(drawn.getpixel((round(centre), round(centre - half_diagonal))))  # top vertex
    edge_middle = (round(centre + half_diagonal / 2), round(centre - half_diagonal / 2))
    assert is_green(drawn.getpixel(edge_middle))
    corner_unrotated = round(centre - 0.2 * SAMPLE_SIDE)  # where an axis-aligned box's corner would be
    assert drawn.getpixel((corner_unrotated, corner_unrotated)) == GREY


def test_missing_images_broken_loaders_and_garbage_boxes_give_a_text_report(tmp_path):
    def load(image_id):
        if image_id == "gone.png":
            raise FileNotFoundError(image_id)
        if image_id == "not-an-image.png":
            return "definitely not a PIL image"
        if image_id == "huge.png":
            return Image.new("RGB", (64, 64), GREY)
        return None

    rows = [
        row(1, "grounding", None, "{<1><2>|<x>} [[1,2]] <rbox>({<.><", "gone.png"),
        row(2, "grounding", "{<}>|", "{<10><10><20><20>|<0>}", "not-an-image.png"),
        row(3, "grounding", "{<-99999999999><0><99999999999><50>|<45>}", "{<10><10><20><20>|<0>}", "huge.png"),
        row(4, "presence", ["not", "a", "string"], 7, None),
        {"question_id": 5, "answer": "yes"},  # no category, no ground truth, no image field at all
    ]
    path = write_report(tmp_path, title="robust", metrics={"grounding_accuracy": float("nan")}, rows=rows,
                        load_image=load)
    html = path.read_text(encoding="utf-8")
    assert "image could not be loaded (FileNotFoundError)" in html
    assert "image could not be drawn (AttributeError)" in html
    assert "no image" in html and "(none)" in html and ">nan<" in html
    # only row 3 has a picture (second in the grid: rows 2 and 3 have boxes): its absurd box is clamped, drawn
    assert [p.name for p in (tmp_path / IMAGES_FOLDER).iterdir()] == ["sample_01.png"]
    assert html.count('src="data:image/png;base64,') == 1


def test_no_predictions_says_so_and_clears_stale_images(tmp_path):
    write_report(tmp_path, title="first", metrics={}, rows=benchmark_rows(), load_image=load_tile)
    assert len(list((tmp_path / IMAGES_FOLDER).iterdir())) == 2

    path = write_report(tmp_path, title="empty", metrics={}, rows=[], load_image=load_tile)
    html = path.read_text(encoding="utf-8")
    assert "No predictions" in html and "No metrics." in html and "<rect" not in html
    assert list((tmp_path / IMAGES_FOLDER).iterdir()) == []

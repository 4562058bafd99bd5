"""A visual report per evaluation: one HTML file that the MLflow UI shows as an artifact.

:func:`write_report` writes ``report.html`` into an evaluation's folder (next to ``predictions.jsonl`` and
``metrics.json``, so the same ``log_artifacts`` call ships it) with:

- the metric table, with one extra column per baseline (e.g. the untrained model, the blind baseline);
- a bar chart (inline SVG, generated here: no plotting dependency) of the accuracy per question category,
  and, when baselines are given, a grouped bar chart of every metric in [0, 1] side by side;
- a grid of sample images with the ground-truth boxes drawn in green and the predicted boxes in red (rotated
  boxes as polygons), each captioned with its question, answer and ground truth.

**Images are embedded** as ``data:`` URIs. MLflow (3.x) shows an ``.html`` artifact in a sandboxed iframe
loaded from a ``blob:`` URL of the file's text, where relative links resolve to nothing; inline SVG and
``data:`` images are what displays there. The same PNGs are also written to ``report_images/`` (which the
artifact browser previews one by one), named by their place in the grid (``sample_00.png`` …; a text-only
card leaves its number unused).

**Per-category accuracy rule** (the bar chart, the sample order and the right/wrong marks): computed from the
rows (never read from metric keys, whose names differ by benchmark kind), one rule for every benchmark, chosen
by the ground truth alone:

1. the ground truth contains boxes (in ``box_convention``): right when *every* ground-truth box is matched
   one-to-one by a predicted box at IoU >= ``iou_threshold`` (:func:`box_matching_accuracy` of the row is 1),
   IoU taken in image fractions (square tiles), as the benchmark's grounding score does;
2. the ground truth is a single option letter ``A``–``E``: right when :func:`extract_choice` reads that
   letter from the answer (the published single-choice rule, per row: not CircularEval);
3. otherwise: right when ``normalize_answer(answer) == normalize_answer(ground_truth)``.

The bars therefore equal the ``strict``-mode exact-match VQA accuracy per type, the grounding accuracy for rows
with one box each, and the per-row single-choice accuracy. They can exceed a ``reference``-mode VQA score
(plain lower-case match) and say little for captions (free text is rarely an exact match); the metric table
holds the benchmark's own numbers.

**Samples** are chosen deterministically: rows with boxes (in the answer or the ground truth) before rows
without, wrong before right, then in file order; the first ``samples`` of that order are shown. A row whose
image is missing, fails to load or has unparsable boxes is shown as text only; nothing in the data can make
the report fail. Every text from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from PIL import Image, ImageDraw

from rsvlm.data.boxes import Box, BoxConvention, parse_boxes
from rsvlm.eval.metrics import box_matching_accuracy, extract_choice, normalize_answer

REPORT_FILE = "report.html"
IMAGES_FOLDER = "report_images"
GROUND_TRUTH_COLOUR = (0, 255, 0)
PREDICTION_COLOUR = (255, 0, 0)
# Sample images are resized (up or down) so their longer side is this many pixels: small synthetic tiles
# become visible and large scenes keep the embedded HTML small.
SAMPLE_SIDE = 384
# Longer texts are cut in captions (the full rows are in predictions.jsonl next to the report).
MAX_CAPTION_CHARS = 600
CHOICE_LETTERS = "ABCDE"

_log = logging.getLogger(__name__)


def write_report(
    folder: Path,
    *,
    title: str,
    metrics: Mapping[str, float],
    rows: Sequence[Mapping[str, Any]],
    load_image: Callable[[str], Optional[Image.Image]],
    box_convention: BoxConvention = BoxConvention.geochat,
    samples: int = 8,
    baseline: Optional[Mapping[str, Mapping[str, float]]] = None,
    iou_threshold: float = 0.5,
) -> Path:
    """Write ``folder/report.html`` (and ``folder/report_images/sample_NN.png``) and return the HTML path.

    ``rows`` are prediction rows (``question_id, image_id, question, answer, category, ground_truth``);
    ``load_image(image_id)`` returns the row's image or ``None`` (an exception counts as ``None``);
    ``baseline`` maps a column label to that model's metrics, shown beside ``metrics``. See the module
    docstring for the accuracy rule and the sample order.
    """
    folder = Path(folder)
    images_folder = folder / IMAGES_FOLDER
    images_folder.mkdir(parents=True, exist_ok=True)
    for stale in images_folder.glob("sample_*.png"):  # from an earlier report in the same folder
        stale.unlink()

    judged = [_judge(row, box_convention, iou_threshold) for row in rows]
    chosen = sorted(range(len(judged)), key=lambda i: (not judged[i].has_boxes, judged[i].right, i))
    cards = [_sample_card(number, judged[index], load_image, images_folder)
             for number, index in enumerate(chosen[:max(samples, 0)])]

    columns = {"this evaluation": dict(metrics)} | {str(k): dict(v) for k, v in (baseline or {}).items()}
    body = [f"<h1>{_esc(title)}</h1>"]
    if judged:
        right = sum(j.right for j in judged)
        body.append(f"<p class=\"summary\">{len(judged)} predictions in {len(_per_category(judged))} categories; "
                    f"{right} right by the row rule ({right / len(judged):.1%}).</p>")
    else:
        body.append("<p class=\"summary empty\">No predictions: this evaluation answered no questions.</p>")
    body += ["<h2>Metrics</h2>", _metric_table(columns)]
    if judged:
        body += ["<h2>Accuracy per category</h2>", _category_chart(_per_category(judged)),
                 f"<p class=\"note\">{_esc(_RULE_NOTE.format(iou=iou_threshold))}</p>"]
    if baseline:
        chart = _metric_chart(columns)
        if chart:
            body += ["<h2>Metrics side by side</h2>", chart]
    if cards:
        body += ["<h2>Samples</h2>",
                 "<p class=\"legend\"><span class=\"swatch gt\"></span> ground truth "
                 "<span class=\"swatch pred\"></span> prediction</p>",
                 "<div class=\"samples\">", *cards, "</div>"]
    document = _PAGE.format(title=_esc(title), style=_STYLE, body="\n".join(body))

    path = folder / REPORT_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(document, encoding="utf-8")
    partial.replace(path)
    return path


# ---------------------------------------------------------------------------------------------- judging

_RULE_NOTE = ("A row is right when: its ground truth has boxes and every one is matched by a predicted box at "
              "IoU >= {iou:g}; its ground truth is an option letter A-E and the answer picks it; otherwise its "
              "normalised answer equals its normalised ground truth.")


@dataclass
class _Judged:
    row: Mapping[str, Any]
    category: str
    right: bool
    truths: list[Box] = field(default_factory=list)
    predictions: list[Box] = field(default_factory=list)

    @property
    def has_boxes(self) -> bool:
        return bool(self.truths or self.predictions)


def _judge(row: Mapping[str, Any], convention: BoxConvention, iou_threshold: float) -> _Judged:
    answer, truth = _text(row.get("answer")), _text(row.get("ground_truth"))
    category = _text(row.get("category")) or "(none)"
    truths, predictions = _boxes(truth, convention), _boxes(answer, convention)
    if truths:
        try:
            right = box_matching_accuracy([predictions], [truths], iou_threshold)["accuracy"] == 1.0
        except Exception:  # noqa: BLE001 - absurd numbers in a box (inf, nan) make it wrong, not a crash
            right = False
    elif len(truth.strip()) == 1 and truth.strip() in CHOICE_LETTERS:
        right = extract_choice(answer, CHOICE_LETTERS) == truth.strip()
    else:
        right = normalize_answer(answer) == normalize_answer(truth)
    return _Judged(row, category, right, truths, predictions)


def _boxes(text: str, convention: BoxConvention) -> list[Box]:
    try:
        boxes = parse_boxes(text, convention)
    except Exception:  # noqa: BLE001 - the parser skips malformed boxes; this is a last guard
        return []
    return [box for box in boxes if all(math.isfinite(v) for v in (box.cx, box.cy, box.w, box.h, box.angle))]


def _per_category(judged: Sequence[_Judged]) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {}
    for item in judged:
        right_total = counts.setdefault(item.category, [0, 0])
        right_total[0] += item.right
        right_total[1] += 1
    return {category: (right, total) for category, (right, total) in sorted(counts.items())}


# ---------------------------------------------------------------------------------------------- tables

def _metric_table(columns: Mapping[str, Mapping[str, Any]]) -> str:
    first, *others = columns.values()
    keys = list(sorted(first)) + sorted({k for metrics in others for k in metrics} - set(first))
    if not keys:
        return "<p class=\"empty\">No metrics.</p>"
    head = "".join(f"<th>{_esc(label)}</th>" for label in columns)
    lines = [f"<table class=\"metrics\"><thead><tr><th>metric</th>{head}</tr></thead><tbody>"]
    for key in keys:
        cells = "".join(f"<td>{_esc(_number(metrics.get(key)))}</td>" for metrics in columns.values())
        lines.append(f"<tr><th scope=\"row\">{_esc(key)}</th>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None:
        return "\u2014"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------- charts

_PLOT_HEIGHT = 160  # pixels for an accuracy of 1.0
_TOP, _LEFT, _BOTTOM = 20, 100, 84  # left: room for the first slanted label
_BAR, _GAP = 34, 18
_SERIES_COLOURS = ("#3b6fb6", "#e08a2c", "#7a7a7a", "#5aa05a", "#a05a9c", "#c4574c")


def _category_chart(stats: Mapping[str, tuple[int, int]]) -> str:
    """One bar per category, height = right / total × _PLOT_HEIGHT."""
    width = _LEFT + len(stats) * (_BAR + _GAP) + _GAP
    parts = [_svg_open("category-accuracy", width, "accuracy per category"), _axis(width)]
    for i, (category, (right, total)) in enumerate(stats.items()):
        accuracy = right / total
        x = _LEFT + _GAP + i * (_BAR + _GAP)
        parts.append(_bar("bar", x, _BAR, accuracy, _SERIES_COLOURS[0],
                          f"{category}: {right}/{total} = {accuracy:.1%}", category=category))
        top = _TOP + _PLOT_HEIGHT * (1 - accuracy) - 4
        parts.append(f"<text class=\"value\" x=\"{x + _BAR / 2:.1f}\" y=\"{top:.1f}\" text-anchor=\"middle\">"
                     f"{accuracy:.0%}</text>")
        parts.append(_label(x + _BAR / 2, f"{category} (n={total})"))
    parts.append("</svg>")
    return "\n".join(parts)


def _metric_chart(columns: Mapping[str, Mapping[str, Any]]) -> str:
    """Grouped bars, one group per metric with values in [0, 1] (every column), one bar per column."""
    keys = [key for key in sorted(next(iter(columns.values())))
            if all(_unit(metrics.get(key)) for metrics in columns.values())][:24]
    if not keys:
        return ""
    series = list(columns)
    group = len(series) * 14 + _GAP
    width = _LEFT + len(keys) * group + _GAP
    parts = [_svg_open("metric-comparison", width, "metrics side by side"), _axis(width)]
    for g, key in enumerate(keys):
        x0 = _LEFT + _GAP + g * group
        for s, label in enumerate(series):
            value = float(columns[label][key])
            parts.append(_bar("metric-bar", x0 + s * 14, 12, value, _SERIES_COLOURS[s % len(_SERIES_COLOURS)],
                              f"{label} — {key}: {value:.4f}", series=label))
        parts.append(_label(x0 + len(series) * 7, key))
    parts.append("</svg>")
    legend = "".join(f"<span class=\"swatch\" style=\"background:{_SERIES_COLOURS[s % len(_SERIES_COLOURS)]}\">"
                     f"</span> {_esc(label)} " for s, label in enumerate(series))
    return "\n".join(parts) + f"\n<p class=\"legend\">{legend}</p>"


def _unit(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0.0 <= value <= 1.0)


def _svg_open(chart_id: str, width: float, label: str) -> str:
    height = _TOP + _PLOT_HEIGHT + _BOTTOM
    return (f"<svg id=\"{chart_id}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0f}\" "
            f"height=\"{height}\" viewBox=\"0 0 {width:.0f} {height}\" role=\"img\" aria-label=\"{_esc(label)}\">")


def _axis(width: float) -> str:
    lines = []
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _TOP + _PLOT_HEIGHT * (1 - fraction)
        lines.append(f"<line class=\"grid\" x1=\"{_LEFT}\" x2=\"{width:.0f}\" y1=\"{y:.1f}\" y2=\"{y:.1f}\"/>"
                     f"<text class=\"tick\" x=\"{_LEFT - 4}\" y=\"{y + 4:.1f}\" text-anchor=\"end\">"
                     f"{fraction:.0%}</text>")
    return "".join(lines)


def _bar(css: str, x: float, width: float, value: float, colour: str, tooltip: str, **data: str) -> str:
    height = _PLOT_HEIGHT * value
    attributes = "".join(f" data-{name}=\"{_esc(text)}\"" for name, text in data.items())
    return (f"<rect class=\"{css}\"{attributes} data-value=\"{value:.6f}\" x=\"{x:.1f}\" "
            f"y=\"{_TOP + _PLOT_HEIGHT - height:.3f}\" width=\"{width:.1f}\" height=\"{height:.3f}\" "
            f"fill=\"{colour}\"><title>{_esc(tooltip)}</title></rect>")


def _label(x: float, text: str) -> str:
    short = text if len(text) <= 22 else text[:21] + "\u2026"
    y = _TOP + _PLOT_HEIGHT + 12
    return (f"<text class=\"label\" x=\"{x:.1f}\" y=\"{y}\" text-anchor=\"end\" "
            f"transform=\"rotate(-35 {x:.1f} {y})\">{_esc(short)}</text>")


# ---------------------------------------------------------------------------------------------- samples

def _sample_card(number: int, item: _Judged, load_image: Callable[[str], Optional[Image.Image]],
                 images_folder: Path) -> str:
    row = item.row
    image_id = row.get("image_id", row.get("image"))
    picture, note = None, None
    if image_id in (None, ""):
        note = "no image"
    else:
        try:
            loaded = load_image(str(image_id))
        except Exception as exc:  # noqa: BLE001 - a broken image must not break the report
            loaded, note = None, f"image could not be loaded ({type(exc).__name__})"
        if loaded is None:
            note = note or "no image"
        else:
            try:
                drawn = _draw(loaded, item.truths, item.predictions)
                buffer = io.BytesIO()
                drawn.save(buffer, format="PNG")
                name = f"sample_{number:02d}.png"
                (images_folder / name).write_bytes(buffer.getvalue())
                encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
                picture = (f"<img src=\"data:image/png;base64,{encoded}\" width=\"{drawn.width}\" "
                           f"height=\"{drawn.height}\" alt=\"{_esc(f'{IMAGES_FOLDER}/{name}')}\">")
            except Exception as exc:  # noqa: BLE001
                _log.warning("report: cannot draw image %r: %s", image_id, exc)
                note = f"image could not be drawn ({type(exc).__name__})"
    boxes = f"{len(item.truths)} ground-truth box(es), {len(item.predictions)} predicted" if item.has_boxes else ""
    verdict = "right" if item.right else "wrong"
    question = row.get("question", row.get("text"))
    head = " · ".join(_esc(part) for part in (f"#{_text(row.get('question_id'))}", item.category, verdict,
                                               _text(image_id) or "", boxes) if part)
    return "\n".join([
        f"<figure class=\"sample {verdict}\">",
        picture or f"<div class=\"noimage\">{_esc(note or 'no image')}</div>",
        f"<figcaption><div class=\"head\">{head}</div><dl>",
        f"<dt>Question</dt><dd>{_esc(_cut(_text(question)))}</dd>",
        f"<dt>Answer</dt><dd class=\"pred\">{_esc(_cut(_text(row.get('answer'))))}</dd>",
        f"<dt>Ground truth</dt><dd class=\"gt\">{_esc(_cut(_text(row.get('ground_truth'))))}</dd>",
        "</dl></figcaption></figure>",
    ])


def _draw(image: Image.Image, truths: Sequence[Box], predictions: Sequence[Box]) -> Image.Image:
    """A resized RGB copy of ``image`` with ``truths`` in green and ``predictions`` in red on top."""
    image = image.convert("RGB")
    scale = SAMPLE_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    line_width = max(2, round(max(size) / 128))
    limit = 10 * max(size)  # keep absurd boxes from asking PIL for astronomically long lines
    # Ground truth drawn wider and underneath, so a prediction right on it shows as red with a green fringe.
    for boxes, colour, width in ((truths, GROUND_TRUTH_COLOUR, line_width + 2),
                                 (predictions, PREDICTION_COLOUR, line_width)):
        for box in boxes:
            # Rotate in pixels, not in fractions: on a non-square image the two differ (see eval.metrics.geometry).
            corners = [(min(max(x, -limit), limit), min(max(y, -limit), limit))
                       for x, y in box.scaled(*size).polygon()]
            draw.line(corners + corners[:1], fill=colour, width=width)
            radius = width / 2  # PIL's wide lines leave a notch at sharp corners: fill each vertex
            for x, y in corners:
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return image


# ---------------------------------------------------------------------------------------------- html

def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CAPTION_CHARS else text[:MAX_CAPTION_CHARS] + " \u2026"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 24px; }
table.metrics { border-collapse: collapse; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.metrics th[scope=row] { text-align: left; font-weight: normal; font-family: monospace; }
.chart .grid { stroke: #ddd; } .chart text { font-size: 11px; fill: #444; }
.note, .summary { color: #555; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; }
.swatch.gt { background: rgb(0, 255, 0); } .swatch.pred { background: rgb(255, 0, 0); }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); gap: 12px; }
figure.sample { margin: 0; border: 1px solid #ccc; padding: 8px; border-left: 4px solid #5aa05a; }
figure.sample.wrong { border-left-color: #c4574c; }
figure.sample img { max-width: 100%; height: auto; display: block; }
.noimage { color: #777; font-style: italic; padding: 8px 0; }
figcaption .head { font-size: 12px; color: #555; margin: 4px 0; }
dl { margin: 0; } dt { font-weight: bold; font-size: 12px; }
dd { margin: 0 0 4px 0; white-space: pre-wrap; word-break: break-word; font-family: monospace; font-size: 12px; }
"""

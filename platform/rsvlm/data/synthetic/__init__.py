"""Deterministic synthetic aerial scenes with instruction data (the demo's, tests' and benchmarks' dataset).

A scene is textured ground, 0–2 roads (grey bands), maybe a water band along one edge, and up to a few objects
of five categories, each with its own colour *and* shape so that a tiny vision tower seeing the image at
64 × 64 px can still tell them apart:

==============  =========================================  ============================
category        shape                                      colour
==============  =========================================  ============================
storage tank    circle with a shadow and an inner ring     light grey
ship            pointed hull with a white deckhouse        orange-red, on water only
airplane        fuselage + swept wings + tail (a cross)    steel blue
vehicle         small rectangle with a dark windscreen     yellow, often on a road
tennis court    rectangle with white court lines           bright green
==============  =========================================  ============================

Every object has a :class:`~rsvlm.data.boxes.Box` (fractions of the image, angle in degrees) and no two
objects overlap. Questions (presence, count, comparison, grounding, relation, caption) are derived from that
ground truth, so every answer is right by construction.

Randomness: each image gets its own ``SeedSequence([seed, split, index])`` split into independent streams for
layout, pixels and questions. Changing how questions are asked therefore never changes an image, and the test
split does not depend on how many training images there are.
"""

from __future__ import annotations

from rsvlm.data.synthetic.categories import CATEGORIES
from rsvlm.data.synthetic.corpus import corpus
from rsvlm.data.synthetic.dataset import write_dataset
from rsvlm.data.synthetic.layout import generate_scene
from rsvlm.data.synthetic.questions import QUESTION_TYPES, questions_for_scene
from rsvlm.data.synthetic.render import render_scene
from rsvlm.data.synthetic.scene import Scene

__all__ = ["CATEGORIES", "QUESTION_TYPES", "Scene", "corpus", "generate_scene", "questions_for_scene", "render_scene",
           "write_dataset"]

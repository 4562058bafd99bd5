"""Caption metrics (BLEU-1..4, METEOR, ROUGE_L, CIDEr, and SPICE where possible), computed by the COCO
caption evaluation toolkit itself (``pycocoevalcap`` 1.2), so the numbers are the published ones.

:func:`caption_scores` runs exactly what ``pycocoevalcap.eval.COCOEvalCap.evaluate`` runs on the same raw
strings: Stanford's PTB tokenizer (lower-cased, punctuation tokens dropped) on the references and,
separately, on the predictions, then ``Bleu(4)``, ``Meteor()``, ``Rouge()`` and ``Cider()`` on the tokens
(and ``Spice()`` when it can run). Only the key names differ: ``BLEU_1`` … ``BLEU_4`` instead of
``Bleu_1`` … ``Bleu_4``. FIT-RS reports the same four metrics on its captioning split (one reference per
image); SPICE is extra. CIDEr's document frequencies come from the references passed in, so CIDEr (like
BLEU, a corpus-level score) depends on the whole set: score a benchmark in one call, not in shards; CIDEr
of a single image is always 0 (every n-gram then has an IDF of log(1/1) = 0).

"Pure" here means no I/O on the caller's data beyond what the toolkit does itself: the tokenizer writes a
temporary file into pycocoevalcap's ``tokenizer/`` folder and METEOR runs a ``java`` subprocess (about 4 s and
1.1 GB to load its paraphrase table, in every call; the JVM is stopped before returning); SPICE, when it runs, writes ``tmp/`` and ``cache/``
under pycocoevalcap's ``spice/`` folder. pycocoevalcap's folder must therefore be writable.

One deliberate difference from the toolkit: besides ``"\\n"`` (which the toolkit itself replaces by a space),
``"\\r"``, ``"\\v"``, ``"\\f"``, ``U+2028`` and ``U+2029`` are replaced by spaces before tokenising. Java's
tokenizer ends a line at each of them, which in the toolkit silently shifts every later caption onto the
wrong id; for captions without those characters the result is identical. A toolkit quirk that *is* kept:
``-lrb-``/``-rrb-`` (from brackets) survive as tokens, because the toolkit drops ``-LRB-`` only in upper case
and tokenises in lower case.

What happens when a requirement is missing (never a silent 0):

- No ``java`` on ``PATH`` (``shutil.which("java")``), or pycocoevalcap not installed: every metric needs
  them (the tokenizer and METEOR run Java), so :class:`CaptionToolkitUnavailable` is raised before any
  work, naming what is missing. Input errors are reported first (they need neither).
- Java starts but a toolkit step fails (e.g. METEOR cannot get its 2 GB heap, or the tokenizer returns fewer
  lines than captions): :class:`CaptionToolkitError`, with METEOR's Java output in the message (the
  tokenizer's goes to the process's stderr).
- SPICE needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap downloads into ``spice/lib`` at first use
  (and fails offline). Their presence is checked without any download attempt (:func:`spice_unavailable_reason`).
  With ``spice=None`` (the default), a missing jar means the ``SPICE`` key is left out and the reason is
  logged once per process (warning, logger ``rsvlm.eval.metrics.captions``); a SPICE run that fails although
  the jars are there (SPICE 1.0 is known to fail on Java 16+ when it uses its cache, as the toolkit does) is
  also logged and the key left out, while the other metrics are returned. ``spice=True`` raises instead in
  both cases; ``spice=False`` never runs it (SPICE parses every caption with CoreNLP: minutes, 8 GB heap).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The jars pycocoevalcap's spice/get_stanford_models.py downloads into spice/lib (spice-1.0.jar's manifest
# puts both on its class path).
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")

# Characters at which Java's PTBTokenizer (-preserveLines) ends a line; "\n" the toolkit replaces itself.
_LINE_BREAKS = str.maketrans({"\r": " ", "\v": " ", "\f": " ", "\u2028": " ", "\u2029": " "})

_spice_reason_logged = False


class CaptionToolkitError(RuntimeError):
    """The COCO caption toolkit (pycocoevalcap and its Java programs) failed while scoring."""


class CaptionToolkitUnavailable(CaptionToolkitError):
    """A requirement of the toolkit is missing: ``java``, pycocoevalcap, or (when asked for) SPICE's jars."""


def caption_scores(
    refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str], *, spice: bool | None = None
) -> dict[str, float]:
    """COCO caption metrics of ``preds`` (one caption per id) against ``refs`` (one or more per id).

    Returns ``{"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"}`` (plus ``"SPICE"``
    when it ran), equal to pycocoevalcap 1.2 on the same raw strings (see the module docstring for the one
    line-break difference and for ``spice``). An empty prediction is allowed and scores as a wrong caption.

    Raises :class:`ValueError` on empty input, on ids present on one side only (naming them), on an id
    without a (non-blank) reference, or on a value that is not a string; :class:`CaptionToolkitUnavailable`
    without Java or pycocoevalcap; :class:`CaptionToolkitError` when a Java step fails.
    """
    ids = _validate(refs, preds)
    _require_toolkit()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    run_spice = _decide_spice(spice)
    # Both sides in the references' id order, tokenised in two runs, as COCOEvalCap.evaluate does.
    gts = _tokenize({key: list(refs[key]) for key in ids})
    res = _tokenize({key: [preds[key]] for key in ids})

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU_{n}": float(value) for n, value in enumerate(bleu, start=1)}
    scores["METEOR"] = _meteor(gts, res)
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if run_spice:
        value = _spice(gts, res, required=spice is True)
        if value is not None:
            scores["SPICE"] = value
    return scores


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here (``None`` if it can): checks for ``java`` and the CoreNLP jars in
    pycocoevalcap's ``spice/lib``, without importing pycocoevalcap's spice module or downloading anything."""
    if shutil.which("java") is None:
        return "SPICE needs `java` on PATH"
    lib = _spice_lib_dir()
    if lib is None:
        return "SPICE needs pycocoevalcap, which is not installed"
    missing = [name for name in SPICE_CORENLP_JARS if not (lib / name).is_file()]
    if missing:
        return (
            f"SPICE needs the Stanford CoreNLP 3.6.0 jars {', '.join(missing)} in {lib}; pycocoevalcap downloads "
            "them from nlp.stanford.edu at first use, which needs internet. Fetch them once where there is "
            "internet (python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models; "
            "get_stanford_models()') or copy them there"
        )
    return None


# ------------------------------------------------------------------------------------------------ helpers


def _validate(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str]) -> list[Hashable]:
    if not isinstance(refs, Mapping) or not isinstance(preds, Mapping):
        raise TypeError(
            f"caption_scores takes two mappings (id -> reference list, id -> prediction), got "
            f"{type(refs).__name__} and {type(preds).__name__}"
        )
    if not refs and not preds:
        raise ValueError("caption_scores got no captions: nothing to score")
    missing, extra = refs.keys() - preds.keys(), preds.keys() - refs.keys()
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"{len(missing)} id(s) have references but no prediction: {_some(missing)}")
        if extra:
            problems.append(f"{len(extra)} id(s) have a prediction but no references: {_some(extra)}")
        raise ValueError("caption_scores needs the same ids in refs and preds; " + "; ".join(problems))
    for key, texts in refs.items():
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(
                f"refs[{key!r}] must be a list of reference captions, got {type(texts).__name__}"
                + (" (wrap a single reference in a list)" if isinstance(texts, str) else "")
            )
        if not texts:
            raise ValueError(f"id {key!r} has no reference caption (each id needs at least one)")
        for number, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"reference {number} of id {key!r} is {type(text).__name__}, not a string")
            if not text.strip():
                raise ValueError(f"reference {number} of id {key!r} is blank")
    for key, text in preds.items():
        if not isinstance(text, str):
            raise ValueError(f"prediction of id {key!r} is {type(text).__name__}, not a string")
    return list(refs)


def _some(ids: set[Hashable], limit: int = 10) -> str:
    shown = sorted(ids, key=repr)[:limit]
    return ", ".join(repr(key) for key in shown) + (f", … ({len(ids) - limit} more)" if len(ids) > limit else "")


def _require_toolkit() -> None:
    if shutil.which("java") is None:
        raise CaptionToolkitUnavailable(
            "caption metrics need Java: `java` is not on PATH (pycocoevalcap's PTB tokenizer and METEOR are "
            "Java programs; any Java 8+ runtime works, e.g. apt-get install default-jre-headless)"
        )
    if importlib.util.find_spec("pycocoevalcap") is None:
        raise CaptionToolkitUnavailable(
            "caption metrics need pycocoevalcap (pip install -c constraints.txt pycocoevalcap==1.2)"
        )


def _spice_lib_dir() -> Path | None:
    # find_spec on the subpackage imports only the (namespace) parent, not spice/spice.py.
    try:
        spec = importlib.util.find_spec("pycocoevalcap.spice")
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _decide_spice(spice: bool | None) -> bool:
    global _spice_reason_logged
    if spice is False:
        return False
    reason = spice_unavailable_reason()
    if reason is None:
        return True
    if spice is True:
        raise CaptionToolkitUnavailable(reason)
    if not _spice_reason_logged:
        _spice_reason_logged = True
        log.warning("Caption scores are reported without SPICE (this is said once per process): %s", reason)
    return False


def _tokenize(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wrapped = {key: [{"caption": text.translate(_LINE_BREAKS)} for text in texts] for key, texts in captions.items()}
    try:
        tokenized = PTBTokenizer().tokenize(wrapped)
    except OSError as error:  # its temporary file (in pycocoevalcap's folder) or starting java
        raise CaptionToolkitError(f"pycocoevalcap's PTB tokenizer could not run: {error}") from error
    # The toolkit zips its output lines with the ids, so a Java failure would silently drop captions.
    short = [key for key, texts in captions.items() if len(tokenized.get(key, ())) != len(texts)]
    if short:
        raise CaptionToolkitError(
            f"the PTB tokenizer (java … edu.stanford.nlp.process.PTBTokenizer) returned no tokens for "
            f"{len(short)} of {len(captions)} ids ({_some(set(short))}); see Java's message above"
        )
    return tokenized


def _meteor(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()  # starts `java -jar -Xmx2G meteor-1.5.jar … -stdio`
    except OSError as error:
        raise CaptionToolkitUnavailable(f"METEOR could not start java: {error}") from error
    try:
        score, _ = scorer.compute_score(gts, res)
    except (ValueError, OSError) as error:  # empty/garbled reply or a broken pipe: Java died
        said = _close_meteor(scorer)
        raise CaptionToolkitError(f"METEOR (java -jar meteor-1.5.jar) failed: {error}; Java said: {said}") from error
    _close_meteor(scorer)
    return float(score)


def _close_meteor(scorer: Any) -> str:
    # compute_score does not release its lock when it fails, and Meteor.__del__ takes that lock: release
    # it, or garbage collection would block forever. Stop the JVM now rather than at collection time.
    if scorer.lock.locked():
        scorer.lock.release()
    process = scorer.meteor_p
    try:
        process.stdin.close()
    except OSError:
        pass
    process.kill()
    process.wait()
    said = process.stderr.read().decode(errors="replace").strip()[-2000:] or "(nothing)"
    process.stdout.close()
    process.stderr.close()
    return said


def _spice(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]], *, required: bool) -> float | None:
    from pycocoevalcap.spice.spice import Spice

    try:
        score, _ = Spice().compute_score(gts, res)
    except (subprocess.CalledProcessError, OSError, ValueError) as error:
        if required:
            raise CaptionToolkitError(f"SPICE (java -jar spice-1.0.jar) failed: {error}") from error
        log.warning("SPICE failed, caption scores are reported without it: %s", error)
        return None
    return float(score)

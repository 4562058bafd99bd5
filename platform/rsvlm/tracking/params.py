"""Turn a (nested) job configuration into MLflow params, with secrets masked.

MLflow params are a flat ``str -> str`` map with a length limit on each value, and they are visible to
everyone who can read the experiment. So every value that goes to MLflow (params, tags, ``log_dict``
artifacts) passes through here first: nested mappings become dotted keys, and anything that looks like a
credential is replaced by ``***`` before it leaves the process.
"""

from __future__ import annotations

import dataclasses
import json
import re
from enum import Enum
from typing import Any, Mapping

from rsvlm.redaction import MASK, mask_url_credentials

# MLflow 3.x rejects a param value longer than this (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_VALUE_LENGTH = 6000
# Tags allow longer values (mlflow.utils.validation.MAX_TAG_VAL_LENGTH).
MAX_TAG_VALUE_LENGTH = 8000

TRUNCATION_MARKER = "...[truncated]"

# Leaf keys that carry secrets, matched case-insensitively. ``secret``, ``password``/``passwd`` and
# ``credential`` match anywhere (``aws_secret_access_key``, ``db_password``); the ``*_key`` forms match with or
# without a separator (``api_key``, ``apiKey``, ``S3_ACCESS_KEY_ID``). ``token`` only matches at the END of the
# key (``hf_token``, ``authToken``, ``TOKEN``) because training configs are full of harmless token counts and
# ids (``max_new_tokens``, ``pad_token_id``, ``tokenizer``) that must stay readable.
_SECRET_KEY_RE = re.compile(
    r"secret|passw(or)?d|credential|(api|access|secret|session)[_\-.]?key|token$",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    """True when a (leaf) config key names a secret, e.g. ``secret_access_key`` or ``hf_token``."""
    return bool(_SECRET_KEY_RE.search(key))


def truncate(value: str, max_length: int = MAX_PARAM_VALUE_LENGTH) -> str:
    """Cut ``value`` to ``max_length`` characters, ending with a visible marker when it was cut."""
    if len(value) <= max_length:
        return value
    return value[: max_length - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _to_plain(value: Any) -> Any:
    """Dataclasses and enums to plain dicts and values, so configs can be passed in either form."""
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


def _json_default(value: Any) -> Any:
    plain = _to_plain(value)
    if plain is value:
        return str(value)
    return plain


def _leaf_to_str(value: Any) -> str:
    value = _to_plain(value)
    if value is None:
        return "None"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        # Lists stay one param (not one per element) so the param set does not change with list length.
        return json.dumps(redact(list(value)), default=_json_default)
    return str(value)


def flatten_config(cfg: Mapping[str, Any], max_length: int = MAX_PARAM_VALUE_LENGTH) -> dict[str, str]:
    """Flatten a nested config into MLflow params: ``{"strategy": {"rank": 8}}`` -> ``{"strategy.rank": "8"}``.

    Lists are JSON-encoded, enums become their value, ``None`` becomes ``"None"``. A value whose leaf key
    names a secret becomes ``***`` (a secret-named section is masked whole); credentials inside URLs are
    masked; values are cut to ``max_length``.
    """
    out: dict[str, str] = {}

    def visit(prefix: str, node: Any) -> None:
        if prefix and is_secret_key(prefix.rsplit(".", 1)[-1]):
            # Masked even when empty/None, so the params do not reveal whether a secret was configured; a
            # secret-named section (``credentials: {...}``) is masked whole rather than flattened.
            out[prefix] = MASK
            return
        node = _to_plain(node)
        if isinstance(node, Mapping):
            for key, child in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), child)
            return
        out[prefix] = truncate(mask_url_credentials(_leaf_to_str(node)), max_length)

    visit("", _to_plain(cfg))
    return out


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (nested dicts/lists) with secret keys and URL credentials masked; structure kept.

    Used for dictionaries logged as artifacts (``log_dict``), where flattening would lose the shape.
    """
    obj = _to_plain(obj)
    if isinstance(obj, Mapping):
        return {k: (MASK if isinstance(k, str) and is_secret_key(k) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return mask_url_credentials(obj)
    return obj

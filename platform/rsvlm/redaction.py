"""Keeping secrets out of what a job writes: URL credentials found, masked, or moved to the environment.

A secret that reaches a config value is copied into Hydra's output folder, MLflow params, checkpoints
(``job_config.yaml``) and so into registered models. So the one secret a user can type into a value, a
URL's ``user:password@``, is taken out of the value before anything records it: the tracking URI's
credentials move to the variables MLflow reads (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``),
and any other value carrying credentials is refused. Everything printed passes :func:`mask_url_credentials`.
Nothing here imports the rest of rsvlm.
"""

from __future__ import annotations

import os
import re
from typing import Optional
from urllib.parse import unquote

MASK = "***"

# ``scheme://user:password@host``: the userinfo part is replaced, the rest of the URL is kept because the
# host/bucket is useful to know. Also catches ``scheme://token@host`` (userinfo without a colon).
_URL_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")

TRACKING_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
TRACKING_PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"


def mask_url_credentials(value: str) -> str:
    """Replace the credentials of every ``scheme://user:pass@host`` in ``value`` by ``***``."""
    return _URL_USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{MASK}@", value)


def has_url_credentials(value: str) -> bool:
    """True when ``value`` holds a URL with a ``user[:password]@`` part."""
    return bool(_URL_USERINFO_RE.search(str(value)))


def split_url_credentials(url: str) -> tuple[str, Optional[str], Optional[str]]:
    """``(url without userinfo, user, password)``; ``(url, None, None)`` when it has none."""
    match = _URL_USERINFO_RE.search(url)
    if match is None:
        return url, None, None
    user, _, password = match.group("userinfo").partition(":")
    clean = url[:match.start()] + match.group("scheme") + url[match.end():]
    return clean, unquote(user) or None, unquote(password) if password else None


def move_tracking_credentials(uri: str) -> str:
    """The tracking URI without its credentials, which are put where MLflow's client reads them.

    ``http://user:pass@host`` → ``http://host`` with ``MLFLOW_TRACKING_USERNAME=user`` and
    ``MLFLOW_TRACKING_PASSWORD=pass`` in this process's environment (a URI with only ``token@`` sets
    ``MLFLOW_TRACKING_TOKEN``). Ray workers started afterwards inherit them; on a cluster set the variables
    there (from a Secret) instead of putting credentials in the URI.
    """
    clean, user, password = split_url_credentials(uri)
    if user is None:
        return uri
    if password is None:
        os.environ["MLFLOW_TRACKING_TOKEN"] = user
    else:
        os.environ[TRACKING_USERNAME_ENV] = user
        os.environ[TRACKING_PASSWORD_ENV] = password
    return clean

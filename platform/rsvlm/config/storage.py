"""Object storage settings (``storage`` group): the endpoint and region of ``s3://`` URIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class StorageConfig:
    """Object storage for ``s3://`` URIs. Credentials come only from the standard AWS environment / profile
    chain, never from here, so they never reach configs, logs or MLflow params."""

    # S3-compatible endpoint (MinIO, a local test server); None = $AWS_ENDPOINT_URL, else AWS itself.
    endpoint_url: Optional[str] = None
    region: Optional[str] = None

"""Small helpers shared by test files (fixtures live in conftest.py)."""

from __future__ import annotations

import socket
from pathlib import Path


def checkpoint_folder(root: Path, size: int = 64) -> Path:
    """A folder shaped like a checkpoint (a file and a subfolder) to log, register and resolve."""
    folder = root / "checkpoint"
    (folder / "adapter").mkdir(parents=True)
    (folder / "config.json").write_text('{"rank": 8}')
    (folder / "adapter" / "weights.bin").write_bytes(bytes(range(256)) * size)
    return folder


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, to compare two trees byte for byte."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

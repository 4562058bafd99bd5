"""`platform/` is a source folder, not a package: a package named `platform` would shadow Python's own."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_platform_folder_has_no_init():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_stdlib_platform_still_works_with_repo_root_on_path():
    code = "import platform, sys; print(platform.system()); import rsvlm; print(rsvlm.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": f"{ROOT}:{ROOT / 'platform'}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    system, location = result.stdout.split()
    assert system == "Linux"
    assert location.endswith("platform/rsvlm/__init__.py")

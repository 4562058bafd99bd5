"""Helpers shared by the benches."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Callable, Iterable, Optional


def each_in_own_process(script: str, flag: str, names: Iterable[str]) -> dict[str, dict]:
    """Run ``script`` again once per name with ``flag name`` added to this command line; collect the JSON
    line each run prints last. A fresh process per variant gives each its own peak memory and allocator.

    A failed run (an out-of-memory error, say) is recorded as ``{"error": <its last stderr line>}``.
    """
    results = {}
    for name in names:
        done = subprocess.run([sys.executable, script, *sys.argv[1:], flag, name], capture_output=True, text=True,
                              check=False)
        if done.returncode == 0:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            lines = done.stderr.strip().splitlines()
            results[name] = {"error": lines[-1] if lines else f"exit code {done.returncode}"}
        print(f"{name}: {results[name]}", file=sys.stderr)
    return results


def every_variant(script: str, flag: str, names: Iterable[str]) -> dict[str, dict]:
    """:func:`each_in_own_process`, exiting with the failures when any variant failed (for benches whose
    figures are ratios between variants, so one missing variant leaves nothing to report)."""
    results = each_in_own_process(script, flag, names)
    failed = {name: result["error"] for name, result in results.items() if "error" in result}
    if failed:
        raise SystemExit(f"variants failed: {failed}")
    return results


def variants_or_one(script: str, args: Any, variants: Iterable[str],
                    measure: Callable[[Any], dict]) -> Optional[dict[str, dict]]:
    """The figures of every variant, each measured by ``script --variant NAME`` in its own process (see
    :func:`every_variant`); or, in such a process (``args.variant`` set), print ``measure(args)`` as its JSON
    line and return None."""
    if args.variant:
        print(json.dumps(measure(args)))
        return None
    return every_variant(script, "--variant", variants)

"""Hyper-parameter sweeps: search spaces (``space``), the Ray Tune driver (``sweep``) and results."""

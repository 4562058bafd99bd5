"""Evaluation for remote-sensing VLMs: pure metric functions live in :mod:`rsvlm.eval.metrics`."""

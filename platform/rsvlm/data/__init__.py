"""Instruction data: records, synthetic scenes, chat templates, label masking, ingest."""

"""rsvlm: instruction-tuning platform for remote-sensing vision-language models."""

__version__ = "0.1.0"

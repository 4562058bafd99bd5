"""rsvlm: instruction-tuning platform for remote-sensing vision-language models."""

import warnings

__version__ = "0.1.0"

# peft (0.21.2, its latest) probes transformers' deprecated alias `is_gradient_checkpointing` in every
# PeftModel.__init__ (each LoRA model built or loaded), and transformers 5 warns at each probe; rsvlm makes no
# such call and cannot change peft's. Only that message, from the module that issues it, is ignored.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                        module=r"transformers\.modeling_utils")

"""The worker's log: our lines in one format, and third-party import-time noise kept out of it.

The worker's stderr lands in the bot's log (and, on a failed start, on the operator's terminal, where
bot/startup_errors.py promises one line). torchao announces at import that the kernels of other Python
versions and of Triton did not load, torch that it deprecated a registration torchao still makes, and
diffusers that it could not import torchao tensor types that only matter for torchao-serialized
checkpoints: none of it concerns a worker, and each start printed six such lines. The loading progress
bars are INFO-level output: shown at LOG_LEVEL=INFO (the default), hidden above it.
"""

from __future__ import annotations

import logging
import os

# Loggers whose warnings are about the libraries' own optional parts; real errors still come through.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao")


def configure_logging() -> None:
    level = logging.getLevelName(os.environ.get("LOG_LEVEL", "INFO").upper())
    level = level if isinstance(level, int) else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if level > logging.INFO:
        hide_progress_bars()


def hide_progress_bars() -> None:
    import diffusers.utils.logging
    import huggingface_hub.utils
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()

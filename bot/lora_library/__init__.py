"""The LoRA library behind /lora, /train and /imagine's LoRAs (see library.py); imports in imports.py."""

from .imports import LoraImporter, Upload
from .library import NAME_RULES, LoraLibrary, check_name, check_stack, clean_name, label, missing, public_origin

__all__ = ["NAME_RULES", "LoraImporter", "LoraLibrary", "Upload", "check_name", "check_stack", "clean_name", "label",
           "missing", "public_origin"]

"""User LoRAs for generation and the trainer's adapters, on the worker's one shared transformer.

- :mod:`.common`: what every part shares: reserved names, ``LoraSettings``, ``AdapterError``, LoRA files,
  and setting the adapter state in full (the rules generation and training keep with each other).
- :mod:`.backend`: ``AdapterBackend``, the interface the engine uses for user LoRAs.
- :mod:`.peft`: ``AdapterManager``, a named peft adapter per LoRA (the eager worker).
- :mod:`.hotswap`: ``HotswapAdapters``, fixed slots swapped in place (the compiled worker: no recompiles).
- :mod:`.trainee`: the trainer's own adapters (the LoRA being trained, the de-distillation LoRA).

Importing the package loads neither torch nor peft; its modules import them where they are used.
"""

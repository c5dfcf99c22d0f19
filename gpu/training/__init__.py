"""LoRA training on the worker's warm pipeline, one module per concern.

- :mod:`.trainer`: ``LoraTrainer``, the stateful trainer (setup, adapter state, optimizer step, sampling, teardown).
- :mod:`.session`: ``TrainingSession``, one run driven step by step from the worker's GPU scheduler.
- :mod:`.config`: ``TrainConfig`` and ``TrainerError``: a run's settings, read and checked without torch.
- :mod:`.data`: the dataset manifest, aspect buckets and the latent/embedding cache.
- :mod:`.checkpoints`: the checkpoint folders on disk (writing, pruning, resuming).
- :mod:`.adapter`: the training adapter (TRAINING_ADAPTER): resolved, downloaded, checked, recorded.
- :mod:`.graphs`: CUDA graphs for training steps on the compiled transformer.
- :mod:`.shapes`: steps padded to a few fixed shapes (masked), so compiled runs record few graphs.
- :mod:`.flow_matching`: the objective and its reproducible randomness.
- :mod:`.loss_curve`: the loss PNG posted with each checkpoint.
- :mod:`.pending`: losses read one step late, so the host queues the next step while the GPU runs this one.
- :mod:`.base_state`: what a run changes on the shared pipeline (text encoder, flags), undone at the end.

Importing the package (or ``config``, ``checkpoints``, ``loss_curve``) loads no torch: torch is imported
inside the functions that need it. The trainee's peft handling is gpu/lora/trainee.py.
"""

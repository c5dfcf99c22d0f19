"""LoRA training on the worker's warm pipeline, one optimizer step at a time.

The trainer adds a peft LoRA named ``TRAINEE_ADAPTER`` ("__trainee__") to the shared
``pipe.transformer`` (no second copy of the base weights) and, when configured, loads a
de-distillation LoRA as ``TRAINING_ADAPTER`` ("__training__"), active during training steps only.

Contract with generation (gpu/lora/common.py; everything runs on the worker's one GPU thread):

* ``step()`` sets the adapter state it needs (trainee + training adapter on, every other adapter
  off, only the trainee trainable) whenever the state is not the one it left, so a generation may run
  between two steps. Bracket it with ``suspend()`` (base model clean: all adapters off) and
  ``resume()`` (training state back); then call the LoRA backend's ``activate(loras)`` for the
  generation itself, which never enables, evicts or deletes the trainer's adapters.
  ``activate([])`` and ``suspend()`` both give pixels bit-identical to the base model in eager mode
  (with regional compile: equal up to rounding, see gpu/lora/common.py).
* While training on CUDA the text encoder lives on the CPU (training uses cached embeddings): encode
  prompts with ``pipe.encode_prompt(prompt, device=pipe.text_encoder.device)`` and move the
  embeddings to the GPU, or use :meth:`LoraTrainer.encode_prompt`. ``close()`` moves it back.
* The loop is the caller's: ``prepare()`` once, then ``step()`` until ``done``, ``save_checkpoint()``
  when ``checkpoint_due``, ``sample()`` when wanted, ``close()`` at the end (or on cancel).

Training is flow matching (gpu/training/flow_matching.py); the data order and the noise of step k derive from
(seed, k) alone, so a resumed run repeats exactly what an uninterrupted run would have done.

This module is the stateful trainer (setup, adapter state, optimizer step, sampling, teardown); its
parts live beside it in gpu/training/: config.py (``TrainConfig``, ``TrainerError``), checkpoints.py (the
checkpoint folders), flow_matching.py (the objective), loss_curve.py (the loss PNG), data.py (the dataset
cache), graphs.py (CUDA graphs), shapes.py (steps padded to a few fixed shapes, so a compiled run records
few graphs whatever the dataset), pending.py (losses read a step late, so the host runs ahead of the GPU),
base_state.py (what the run changes on the shared pipeline, undone by ``close()``); the trainee's peft
handling is gpu/lora/trainee.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import accel
from ..lora.common import TRAINEE_ADAPTER, adapter_names, apply_adapters
from ..lora.trainee import (
    adapter_signature,
    add_trainee,
    find_trainee_layer,
    make_optimizer,
    remove_trainer_adapters,
    set_training_state,
    trainee_state_dict,
    write_trainee,
)
from .adapter import TrainingAdapter, checked_adapter
from .base_state import PipelineChanges, free_memory
from .checkpoints import (
    Checkpoint,
    check_compatible,
    latest_state,
    prune_checkpoints,
    restore_training_state,
    training_state,
    write_checkpoint,
)
from .config import TrainConfig, TrainerError
from .data import Sample, encode_caption, load_or_build
from .flow_matching import autocast, derived_seed, flow_matching_loss, sample_index
from .graphs import TrainingGraphs, graphs_unsuitable
from .loss_curve import render_loss_curve
from .pending import PendingLosses, can_pipeline, check, not_finite, skips_on_gpu
from .quantized import QuantizedBase, quantized_linears
from .shapes import choose_shapes, unpadded_shapes

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class LoraTrainer:
    def __init__(self, pipe, dataset_dir: Path, output_dir: Path, config: TrainConfig, device=None, dtype=None,
                 graphs: TrainingGraphs | None = None, adapter: TrainingAdapter | None = None, pipelined: bool = True):
        import torch

        self.pipe = pipe
        self.transformer = pipe.transformer
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.config = config
        self.device = torch.device(device) if device is not None else self.transformer.device
        self.dtype = dtype if dtype is not None else self.transformer.dtype
        self.optimizer: torch.optim.Optimizer | None = None
        self.samples: list[Sample] = []
        self._latents: list = []
        self._embeds: list = []
        self._shapes: list = []  # per sample: the padded (image, caption) tokens of its steps, or None (unpadded)
        self._trainee_params: list = []
        self._step = 0
        self._losses: list[float] = []
        self._pending = PendingLosses()  # losses still on the GPU: read one step late (gpu/training/pending.py)
        self._may_pipeline = pipelined  # False: read each loss at once (the benchmark's baseline)
        self._step_seconds: list[float] = []
        self._base = PipelineChanges(pipe, self.device)  # what the run changes on the shared pipeline (undone by close())
        self._prompt_cache: dict = {}
        self._training_state: tuple | None = None  # adapter-state signature after the last _configure_training
        self._saved_step = -1  # step of the newest checkpoint written or resumed from
        self._probe = None
        self._graphs = graphs or TrainingGraphs([])  # CUDA graphs for training steps (gpu/training/graphs.py)
        self._quantized: QuantizedBase | None = None  # the base's quantized layers (gpu/training/quantized.py)
        # The training adapter resolved from config.training_adapter (gpu/training/adapter.py: the session does it
        # in a thread, as it may download); None: prepare() takes config.training_adapter as a local file.
        self.adapter = adapter
        self._prepared = False
        self._closed = False

    # -- public state -----------------------------------------------------------------------------------------

    @property
    def step_count(self) -> int:
        return self._step

    @property
    def losses(self) -> list[float]:
        """Every step's loss so far (waits for the GPU to finish the newest step)."""
        self._read_losses()
        return list(self._losses)

    @property
    def done(self) -> bool:
        return self._step >= self.config.steps

    @property
    def checkpoint_due(self) -> bool:
        """True after a step that ends a checkpoint interval (or the last step) until that checkpoint is saved."""
        at_boundary = self._step % self.config.checkpoint_every == 0 or self._step == self.config.steps
        return self._step > 0 and at_boundary and self._saved_step != self._step

    @property
    def uses_training_graphs(self) -> bool:
        """Training steps run their own compiled blocks (CUDA graphs on the GPU: gpu/training/graphs.py)."""
        return bool(self._graphs.blocks)

    @property
    def step_shapes(self) -> list:
        """Each sample's step shape: padded (image tokens, caption tokens), else unpadded (latent shape, caption / 32)."""
        unpadded = unpadded_shapes(self._latents, self._embeds)
        return [shape if shape is not None else plain for shape, plain in zip(self._shapes, unpadded, strict=True)]

    @property
    def needs_warm_up(self) -> bool:
        """Freeing the CUDA graphs discarded every compiled graph: generation should warm up again."""
        return self._graphs.reset_compiled_code

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def prepared(self) -> bool:
        return self._prepared

    @property
    def has_training_adapter(self) -> bool:
        return self.adapter is not None and self.adapter.path is not None

    # -- setup ------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Cache latents and embeddings, add the adapters, build the optimizer, resume if a checkpoint exists."""
        if self._prepared:
            return
        if self._closed:
            raise TrainerError("the trainer is closed")
        self.config.validate()
        if TRAINEE_ADAPTER in adapter_names(self.transformer):
            raise TrainerError("another training is already running on this model")
        self.adapter = checked_adapter(self.adapter, self.config.training_adapter, self.transformer)  # before encoding
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.samples = load_or_build(self.pipe, self.dataset_dir, self.output_dir / "cache.pt", self.config.resolution)
        self._latents = [sample.latent.to(self.device) for sample in self.samples]  # float32
        self._embeds = [sample.embeds.to(self.device, self.dtype) for sample in self.samples]
        self.encode_prompt(self._sample_prompt())  # while the text encoder is still on the accelerator
        quantized = bool(quantized_linears(self.transformer))  # trains eager, checkpointed (gpu/training/quantized.py)
        compiled = bool(self._graphs.blocks) or accel.has_compiled_modules(self.transformer)
        # A quantized base trains eager (unpadded); compiled blocks get a few padded shapes (gpu/training/shapes.py).
        self._shapes = choose_shapes(self.transformer, self._latents, self._embeds, compiled and not quantized)
        unsuitable = graphs_unsuitable(self.step_shapes, self.config.gradient_checkpointing or quantized)
        if self._graphs.blocks and unsuitable:
            log.info("training without CUDA graphs: %s", unsuitable)
            self._graphs = self._graphs.release()
        self._base.offload_text_encoder()
        try:
            self._add_adapters()
            memory_saving = self.config.gradient_checkpointing or self._quantized is not None
            self.optimizer = make_optimizer(self._trainee_params, self.config, self.device, memory_saving)
            self._resume_from_checkpoint()
        except Exception:
            self.close()
            raise
        self._prepared = True
        self._configure_training()
        log.info("training prepared: %d images, rank %d, step %d of %d, optimizer %s", len(self.samples),
                 self.config.rank, self._step, self.config.steps, type(self.optimizer).__name__)

    def _add_adapters(self) -> None:
        self._base.remember_requires_grad()
        self._trainee_params = add_trainee(self.pipe, self.transformer, self.config, self.device,
                                           self.adapter.path if self.adapter is not None else None)
        self._quantized = QuantizedBase.find(self.transformer)
        if self._quantized is not None:
            log.info("training on a quantized base: %s", self._quantized.describe())
        if self.config.gradient_checkpointing or self._quantized is not None:
            self._base.enable_checkpointing()

    # -- adapter state ----------------------------------------------------------------------------------------

    def _adapter_signature(self) -> tuple:
        self._probe = find_trainee_layer(self.transformer, self._probe)
        return adapter_signature(self.transformer, self._probe, self._trainee_params)

    def _configure_training(self) -> None:
        """Trainee (+ training adapter) active; only the trainee's parameters take gradients."""
        set_training_state(self.transformer, self._trainee_params, self.has_training_adapter)
        self._training_state = self._adapter_signature()
        self._graphs.enter()
        if self._quantized is not None:
            self._quantized.enter()

    def _ensure_training_state(self) -> None:
        if self._training_state is None or self._adapter_signature() != self._training_state:
            self._configure_training()

    def suspend(self) -> None:
        """Base model clean (all adapters off) for a generation between steps; step() or resume() undo it."""
        self._require_prepared()
        apply_adapters(self.transformer, [], [])
        self._training_state = None
        self._exit_training_layers()  # generation's compiled blocks for what comes next

    def resume(self) -> None:
        self._require_prepared()
        self._configure_training()

    def _exit_training_layers(self) -> None:
        self._graphs.exit()
        if self._quantized is not None:
            self._quantized.exit()

    def _require_prepared(self) -> None:
        if not self._prepared or self._closed:
            raise TrainerError("the trainer is not prepared" if not self._closed else "the trainer is closed")

    # -- training ---------------------------------------------------------------------------------------------

    def step(self) -> float | None:
        """One optimizer step on one image (batch 1). Returns the newest loss read: this step's, or on CUDA the
        step before's (None after a first step), as the host runs a step ahead of the GPU (gpu/training/pending.py);
        ``losses``, checkpoints and ``close()`` read every loss. TrainerError when a step's loss or gradients
        are not finite (on CUDA raised by the step after it, before that one's update)."""
        import torch

        self._require_prepared()
        optimizer = self.optimizer
        assert optimizer is not None  # made by prepare(), dropped only by close()
        self._ensure_training_state()
        started = time.perf_counter()
        self._graphs.mark_step()
        try:
            loss = self._forward_backward()
        except torch.OutOfMemoryError:
            if self._base.checkpointing:
                raise
            out_of_memory = True  # retried below, once the failed attempt's tensors are gone
        else:
            out_of_memory = False
        if out_of_memory:
            # Gradient checkpointing only when memory requires it: the first step that does not fit turns it
            # on and runs again (same step, same noise: the loss is the one the step would have had).
            optimizer.zero_grad(set_to_none=True)
            self._graphs = self._graphs.release()  # frees their memory pool; checkpointing runs without graphs
            free_memory(self.device)
            log.warning("out of GPU memory at step %d: gradient checkpointing on for the rest of the run", self._step + 1)
            self._base.enable_checkpointing()
            loss = self._forward_backward()
        clipped = (torch.nn.utils.clip_grad_norm_(self._trainee_params, self.config.max_grad_norm)
                   if self.config.max_grad_norm > 0 else None)
        bad = not_finite(loss, clipped)
        pipelined = self._may_pipeline and can_pipeline(self.device)
        try:
            if pipelined:
                self._read_losses()  # the step before's: its copy is done, and a bad one stops the run before this update
                if skips_on_gpu(optimizer):
                    optimizer.found_inf = bad  # type: ignore[attr-defined]  # a bad step is skipped on the GPU
            else:
                value = check(self._step + 1, float(loss.detach()), float(bad))
        except TrainerError:
            optimizer.zero_grad(set_to_none=True)
            raise
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self._step += 1
        if pipelined:
            self._pending.add(self._step, loss, bad)
        else:
            self._losses.append(value)
        self._step_seconds.append(time.perf_counter() - started)
        return self._losses[-1] if self._losses else None

    def _read_losses(self) -> None:
        self._losses.extend(self._pending.settle())

    def _forward_backward(self):
        loss = self._loss(self._step)
        loss.backward()
        return loss

    def _loss(self, step: int):
        import torch

        index = sample_index(self.config.seed, step, len(self.samples))
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, "noise", step))
        return flow_matching_loss(self.transformer, self.pipe, self._latents[index], self._embeds[index], generator,
                                  self.config.timestep_sampling, self.device, self.dtype, self._shapes[index])

    def _autocast(self):
        return autocast(self.device, self.dtype)

    # -- checkpoints ------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Checkpoint:
        """LoRA (diffusers format) + training state in output_dir/checkpoints/step-NNNNNN/, then prune."""
        self._require_prepared()
        assert self.adapter is not None  # set by prepare()
        self._read_losses()
        checkpoint = write_checkpoint(self.output_dir, self._step, self.config, self._losses, self._step_seconds,
                                      self._write_lora, self._checkpoint_state, self.adapter.record())
        self._saved_step = self._step
        prune_checkpoints(self.output_dir, self.config.keep_checkpoints)
        log.info("checkpoint %s (loss %.4f, %.3f s/step)", checkpoint.path, checkpoint.loss, checkpoint.seconds_per_step)
        return checkpoint

    def lora_state_dict(self) -> dict:
        """The trainee's LoRA in diffusers/peft naming, in the pipeline's dtype, on the CPU."""
        return trainee_state_dict(self.transformer, self.dtype)

    def _write_lora(self, folder: Path) -> None:
        write_trainee(self.pipe, self.transformer, self.dtype, folder,
                      self.adapter.safetensors_metadata() if self.adapter is not None else None)

    def _checkpoint_state(self) -> dict:
        return training_state(self.transformer, self._trainee_params, self.optimizer, self._step, self._losses,
                              self._step_seconds, self.config)

    def _resume_from_checkpoint(self) -> None:
        found = latest_state(self.output_dir)
        if found is None:
            return
        folder, state = found
        check_compatible(state["config"], self.config)
        restore_training_state(self.transformer, self.optimizer, state)
        self._step = self._saved_step = int(state["step"])
        self._losses = [float(x) for x in state["losses"]]
        self._step_seconds = [float(x) for x in state["step_seconds"]]
        log.info("resumed training from %s at step %d", folder, self._step)

    # -- sampling and reporting -------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> list:
        """Prompt embeddings on the training device, wherever the text encoder currently lives."""
        cached = self._prompt_cache.get(prompt)
        if cached is None:
            cached = encode_caption(self.pipe, prompt).to(self.device, self.dtype)
            self._prompt_cache = {prompt: cached}  # sampling needs one prompt at a time
        return [cached]

    def _sample_prompt(self) -> str:
        return self.config.sample_prompt or (self.samples[0].caption if self.samples else "")

    def sample(self, prompt: str | None = None):
        """A Turbo image (guidance 0, fixed seed) with only the trainee active; the training state comes back after."""
        import torch

        self._require_prepared()
        embeds = self.encode_prompt(prompt or self._sample_prompt())
        apply_adapters(self.transformer, [TRAINEE_ADAPTER], [1.0])
        self._training_state = None
        self._exit_training_layers()  # generation's compiled blocks for what comes next
        try:
            generator = torch.Generator("cpu").manual_seed(self.config.sample_seed)
            with torch.inference_mode():
                image = self.pipe(prompt_embeds=embeds, height=self.config.resolution, width=self.config.resolution,
                                  num_inference_steps=self.config.sample_steps, guidance_scale=0.0,
                                  generator=generator).images[0]
        finally:
            self._configure_training()
        return image

    def loss_curve_png(self) -> bytes:
        return render_loss_curve(self._losses)  # read by save_checkpoint(), which comes first

    # -- teardown ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the trainer's adapters, restore the text encoder and the base model, free the optimizer."""
        if self._closed:
            return
        self._closed = True
        try:
            self._read_losses()  # the newest step's, so `losses` stays whole after close()
        except Exception as exc:  # noqa: BLE001 - a bad last step, or the device failed: closing goes on
            log.info("the last training step's loss was not read: %s", exc)
            self._pending.clear()
        self._graphs = self._graphs.release()
        if self._quantized is not None:
            self._quantized.exit()
            self._quantized = None
        remove_trainer_adapters(self.pipe, self.transformer)
        self._base.restore()
        self.optimizer = None
        self._latents, self._embeds, self._shapes, self._trainee_params, self._prompt_cache = [], [], [], [], {}
        self._probe = None
        free_memory(self.device)


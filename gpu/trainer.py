"""LoRA training on the worker's warm pipeline, one optimizer step at a time.

The trainer adds a peft LoRA named ``TRAINEE_ADAPTER`` ("__trainee__") to the shared
``pipe.transformer`` (no second copy of the base weights) and, when configured, loads a
de-distillation LoRA as ``TRAINING_ADAPTER`` ("__training__"), active during training steps only.

Contract with generation (gpu/adapters.py; everything runs on the worker's one GPU thread):

* ``step()`` sets the adapter state it needs (trainee + training adapter on, every other adapter
  off, only the trainee trainable) whenever the state is not the one it left, so a generation may run
  between two steps. Bracket it with ``suspend()`` (base model clean: all adapters off) and
  ``resume()`` (training state back); then call ``AdapterManager.activate(loras)`` for the
  generation itself, which never enables, evicts or deletes the trainer's adapters.
  ``activate([])`` and ``suspend()`` both give pixels bit-identical to the base model in eager mode
  (with regional compile: equal up to rounding, see gpu/adapters.py).
* While training on CUDA the text encoder lives on the CPU (training uses cached embeddings): encode
  prompts with ``pipe.encode_prompt(prompt, device=pipe.text_encoder.device)`` and move the
  embeddings to the GPU, or use :meth:`LoraTrainer.encode_prompt`. ``close()`` moves it back.
* The loop is the caller's: ``prepare()`` once, then ``step()`` until ``done``, ``save_checkpoint()``
  when ``checkpoint_due``, ``sample()`` when wanted, ``close()`` at the end (or on cancel).

Training is flow matching as the pipeline samples it: ``x_t = (1 - s) x0 + s eps``, the transformer
sees time ``1 - s`` and predicts ``x0 - eps`` (the pipeline negates the output before the Euler step
``x += (s_next - s) * (eps - x0)``). The data order and the noise of step k derive from
(seed, k) alone, so a resumed run repeats exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .adapters import (
    TRAINEE_ADAPTER,
    TRAINING_ADAPTER,
    AdapterError,
    adapter_names,
    apply_adapters,
    quiet_peft,
    remove_peft_if_empty,
    resolve_lora_file,
)
from .training_data import DatasetError, Sample, encode_caption, load_or_build

log = logging.getLogger(__name__)

TIMESTEP_SAMPLING = ("sigmoid", "shift", "uniform")
STATE_FILE = "training_state.pt"
META_FILE = "checkpoint.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
_CHECKPOINT_RE = re.compile(r"^step-(\d{6,})$")

__all__ = ["TRAINEE_ADAPTER", "TRAINING_ADAPTER", "Checkpoint", "DatasetError", "LoraTrainer", "TrainConfig",
           "TrainerError", "list_checkpoints", "render_loss_curve"]


class TrainerError(Exception):
    """Training cannot go on; the message can be shown to the user."""


@dataclass
class TrainConfig:
    rank: int = 64
    alpha: int = 64
    steps: int = 4000
    learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    timestep_sampling: str = "sigmoid"  # also "shift", "uniform"
    resolution: int = 512  # aspect buckets around resolution**2 pixels
    checkpoint_every: int = 250
    keep_checkpoints: int = 7
    seed: int = 0
    target_modules: tuple = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")
    training_adapter: str | None = None  # de-distillation LoRA (ai-toolkit or diffusers format)
    sample_prompt: str = ""  # empty: the first caption of the dataset
    sample_seed: int = 42
    sample_steps: int = 8
    max_grad_norm: float = 1.0  # 0 turns clipping off
    gradient_checkpointing: bool = False  # less memory, about 2x slower steps

    def validate(self) -> None:
        problems = []
        if self.rank < 1 or self.alpha <= 0:
            problems.append("rank and alpha must be positive")
        if self.steps < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.sample_steps < 1:
            problems.append("steps, checkpoint_every, keep_checkpoints and sample_steps must be at least 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)) or self.weight_decay < 0:
            problems.append("learning_rate must be positive and weight_decay not negative")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            problems.append(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}")
        if self.resolution < 16 or self.resolution % 16 or self.resolution > 2048:
            problems.append("resolution must be a multiple of 16 between 16 and 2048")
        if not self.target_modules:
            problems.append("target_modules is empty")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        values = {}
        for name, value in data.items():
            default = getattr(cls, name, None) if name != "target_modules" else ()
            values[name] = _coerce(name, value, default)
        config = cls(**values)
        config.validate()
        return config


def _coerce(name: str, value, default):
    try:
        if name == "target_modules":
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise TypeError("expected a list of module names")
            return tuple(value)
        if name == "training_adapter":
            return None if value in (None, "") else str(value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if isinstance(default, int) and not isinstance(value, bool):
            if float(value) != int(value):
                raise ValueError("expected a whole number")
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad value {value!r} for {name}: {exc}") from exc


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path  # the checkpoint folder: pipe.load_lora_weights(path) loads it
    lora_file: Path  # diffusers-format LoRA (safetensors)
    loss: float  # mean loss of the steps since the previous checkpoint
    seconds_per_step: float  # mean over the same steps


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """Finished checkpoints in output_dir/checkpoints, oldest first."""
    found = []
    for folder in _checkpoint_dirs(Path(output_dir)):
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError):
            continue
        found.append(Checkpoint(int(meta["step"]), folder, folder / LORA_FILE, float(meta["loss"]),
                                float(meta["seconds_per_step"])))
    return found


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    folders = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(folders)]


def _derived_seed(seed: int, kind: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{kind}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class _SavedFlags:
    requires_grad: dict = field(default_factory=dict)  # base parameter -> flag before training
    text_encoder_device: object = None
    checkpointing: bool = False


class LoraTrainer:
    def __init__(self, pipe, dataset_dir: Path, output_dir: Path, config: TrainConfig, device=None, dtype=None):
        import torch

        self.pipe = pipe
        self.transformer = pipe.transformer
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.config = config
        self.device = torch.device(device) if device is not None else self.transformer.device
        self.dtype = dtype if dtype is not None else self.transformer.dtype
        self.optimizer = None
        self.samples: list[Sample] = []
        self._latents: list = []
        self._embeds: list = []
        self._trainee_params: list = []
        self._step = 0
        self._losses: list[float] = []
        self._step_seconds: list[float] = []
        self._saved = _SavedFlags()
        self._prompt_cache: dict = {}
        self._training_state = None  # adapter-state signature after the last _configure_training
        self._saved_step = -1  # step of the newest checkpoint written or resumed from
        self._probe = None
        self._prepared = False
        self._closed = False

    # -- public state -----------------------------------------------------------------------------------------

    @property
    def step_count(self) -> int:
        return self._step

    @property
    def losses(self) -> list[float]:
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
    def has_training_adapter(self) -> bool:
        return self.config.training_adapter is not None

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
        if self.has_training_adapter:
            self._training_adapter_file()  # fail before minutes of encoding, not after
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.samples = load_or_build(self.pipe, self.dataset_dir, self.output_dir / "cache.pt", self.config.resolution)
        self._latents = [sample.latent.to(self.device) for sample in self.samples]  # float32
        self._embeds = [sample.embeds.to(self.device, self.dtype) for sample in self.samples]
        self.encode_prompt(self._sample_prompt())  # while the text encoder is still on the accelerator
        self._offload_text_encoder()
        try:
            self._add_adapters()
            self.optimizer = self._make_optimizer()
            self._resume_from_checkpoint()
        except Exception:
            self.close()
            raise
        self._prepared = True
        self._configure_training()
        log.info("training prepared: %d images, rank %d, step %d of %d, optimizer %s", len(self.samples),
                 self.config.rank, self._step, self.config.steps, type(self.optimizer).__name__)

    def _offload_text_encoder(self) -> None:
        encoder = self.pipe.text_encoder
        if encoder is not None and encoder.device.type == "cuda":
            self._saved.text_encoder_device = encoder.device
            encoder.to("cpu")

    def _add_adapters(self) -> None:
        import torch
        from peft import LoraConfig

        self._saved.requires_grad = {param: param.requires_grad for param in self.transformer.parameters()}
        lora_config = LoraConfig(r=self.config.rank, lora_alpha=self.config.alpha, init_lora_weights=True,
                                 target_modules=list(self.config.target_modules))
        devices = [self.device] if self.device.type == "cuda" else []
        with quiet_peft(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(_derived_seed(self.config.seed, "init", 0))  # lora_A's init: same seed, same run
            try:
                self.transformer.add_adapter(lora_config, adapter_name=TRAINEE_ADAPTER)
            except ValueError as exc:
                raise TrainerError(f"the LoRA cannot be added: {exc}") from exc
            if self.has_training_adapter:
                self._load_training_adapter()
        marker = f".{TRAINEE_ADAPTER}."
        self._trainee_params = [param for name, param in self.transformer.named_parameters() if marker in name]
        for param in self._trainee_params:
            param.data = param.data.to(torch.float32)  # fp32 master weights; the forward autocasts on CUDA
        if self.config.gradient_checkpointing:
            self._saved.checkpointing = bool(self.transformer.gradient_checkpointing)
            self.transformer.enable_gradient_checkpointing()

    def _training_adapter_file(self) -> Path:
        try:
            return resolve_lora_file(self.config.training_adapter)
        except AdapterError as exc:
            raise TrainerError(f"the training adapter could not be loaded: {exc}") from exc

    def _load_training_adapter(self) -> None:
        file = self._training_adapter_file()
        try:
            self.pipe.load_lora_weights(str(file), adapter_name=TRAINING_ADAPTER)
        except (OSError, ValueError, RuntimeError) as exc:
            raise TrainerError(f"the training adapter could not be loaded: {exc}") from exc

    def _make_optimizer(self):
        import torch

        cfg = self.config
        if self.device.type == "cuda":
            try:
                import bitsandbytes

                return bitsandbytes.optim.AdamW8bit(self._trainee_params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
            except ImportError:
                pass
        return torch.optim.AdamW(self._trainee_params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                 fused=self.device.type == "cuda")

    # -- adapter state ----------------------------------------------------------------------------------------

    def _adapter_signature(self) -> tuple:
        probe = self._probe_layer()
        return (tuple(adapter_names(self.transformer)), tuple(probe.active_adapters), bool(probe.disable_adapters),
                self._trainee_params[0].requires_grad)

    def _probe_layer(self):
        """One LoRA layer holding the trainee: its state stands for every layer (set_adapters sets all)."""
        if self._probe is not None and TRAINEE_ADAPTER in self._probe.lora_A:
            return self._probe
        for module in self.transformer.modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and TRAINEE_ADAPTER in lora_a:
                self._probe = module
                return module
        raise TrainerError("the LoRA being trained was removed from the model")

    def _configure_training(self) -> None:
        """Trainee (+ training adapter) active; only the trainee's parameters take gradients."""
        names = [TRAINEE_ADAPTER] + ([TRAINING_ADAPTER] if self.has_training_adapter else [])
        apply_adapters(self.transformer, names, [1.0] * len(names))
        trainee = {id(param) for param in self._trainee_params}
        for param in self.transformer.parameters():
            param.requires_grad_(id(param) in trainee)
        self._training_state = self._adapter_signature()

    def _ensure_training_state(self) -> None:
        if self._training_state is None or self._adapter_signature() != self._training_state:
            self._configure_training()

    def suspend(self) -> None:
        """Base model clean (all adapters off) for a generation between steps; step() or resume() undo it."""
        self._require_prepared()
        apply_adapters(self.transformer, [], [])
        self._training_state = None

    def resume(self) -> None:
        self._require_prepared()
        self._configure_training()

    def _require_prepared(self) -> None:
        if not self._prepared or self._closed:
            raise TrainerError("the trainer is not prepared" if not self._closed else "the trainer is closed")

    # -- training ---------------------------------------------------------------------------------------------

    def step(self) -> float:
        """One optimizer step on one image (batch 1); returns its loss."""
        import torch

        self._require_prepared()
        self._ensure_training_state()
        started = time.perf_counter()
        loss = self._loss(self._step)
        loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainerError(f"the loss became {value} at step {self._step + 1}; try a lower learning rate")
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self._trainee_params, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._step += 1
        self._losses.append(value)
        self._step_seconds.append(time.perf_counter() - started)
        return value

    def _sample_index(self, step: int) -> int:
        import torch

        count = len(self.samples)
        epoch, position = divmod(step, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(_derived_seed(self.config.seed, "order", epoch)))
        return int(order[position])

    def _sigma(self, generator) -> float:
        import torch

        mode = self.config.timestep_sampling
        if mode == "sigmoid":
            sigma = float(torch.sigmoid(torch.randn(1, generator=generator)))
        else:
            sigma = float(torch.rand(1, generator=generator))
            if mode == "shift":
                shift = float(self.pipe.scheduler.config.get("shift", 3.0))
                sigma = shift * sigma / (1 + (shift - 1) * sigma)
        return min(max(sigma, 1e-3), 1.0)

    def _loss(self, step: int):
        import torch
        import torch.nn.functional as F

        index = self._sample_index(step)
        generator = torch.Generator().manual_seed(_derived_seed(self.config.seed, "noise", step))
        clean = self._latents[index]
        noise = torch.randn(clean.shape, generator=generator).to(self.device, clean.dtype)
        sigma = self._sigma(generator)
        noisy = (1.0 - sigma) * clean + sigma * noise
        target = clean - noise
        timestep = torch.tensor([1.0 - sigma], device=self.device, dtype=torch.float32)
        with self._autocast():
            out = self.transformer([noisy.to(self.dtype).unsqueeze(1)], timestep, [self._embeds[index]], return_dict=False)[0]
        return F.mse_loss(out[0].float().squeeze(1), target.float())

    def _autocast(self):
        import contextlib

        import torch

        if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    # -- checkpoints ------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Checkpoint:
        """LoRA (diffusers format) + training state in output_dir/checkpoints/step-NNNNNN/, then prune."""
        self._require_prepared()
        root = self.output_dir / "checkpoints"
        final = root / f"step-{self._step:06d}"
        scratch = root / f"{final.name}.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        self._write_lora(scratch)
        self._write_state(scratch / STATE_FILE)
        since = self._step % self.config.checkpoint_every or self.config.checkpoint_every
        recent_losses, recent_seconds = self._losses[-since:], self._step_seconds[-since:]
        loss = sum(recent_losses) / len(recent_losses) if recent_losses else float("nan")
        seconds = sum(recent_seconds) / len(recent_seconds) if recent_seconds else 0.0
        meta = {"step": self._step, "loss": loss, "seconds_per_step": seconds, "config": self.config.to_json(),
                "saved_at": time.time()}
        (scratch / META_FILE).write_text(json.dumps(meta, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(scratch, final)
        self._saved_step = self._step
        self._prune()
        log.info("checkpoint %s (loss %.4f, %.3f s/step)", final, loss, seconds)
        return Checkpoint(self._step, final, final / LORA_FILE, loss, seconds)

    def lora_state_dict(self) -> dict:
        """The trainee's LoRA in diffusers/peft naming, in the pipeline's dtype, on the CPU."""
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.transformer, adapter_name=TRAINEE_ADAPTER)
        return {key: value.detach().to("cpu", self.dtype).contiguous() for key, value in state.items()}

    def _write_lora(self, folder: Path) -> None:
        metadata = self.transformer.peft_config[TRAINEE_ADAPTER].to_dict()
        type(self.pipe).save_lora_weights(folder, transformer_lora_layers=self.lora_state_dict(),
                                          transformer_lora_adapter_metadata=metadata)

    def _write_state(self, path: Path) -> None:
        import torch

        names = {id(param): name for name, param in self.transformer.named_parameters()}
        state = {
            "step": self._step,
            "losses": list(self._losses),
            "step_seconds": list(self._step_seconds),
            "config": self.config.to_json(),
            "trainee": {names[id(param)]: param.detach().to("cpu").clone() for param in self._trainee_params},
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(state, path)

    def _prune(self) -> None:
        """Keep the newest keep_checkpoints folders; only the newest keeps its (large) training state."""
        folders = _checkpoint_dirs(self.output_dir)
        for stale in folders[: -self.config.keep_checkpoints]:
            shutil.rmtree(stale, ignore_errors=True)
        for older in folders[-self.config.keep_checkpoints: -1]:
            (older / STATE_FILE).unlink(missing_ok=True)
        for scratch in (self.output_dir / "checkpoints").glob("*.tmp"):
            shutil.rmtree(scratch, ignore_errors=True)

    def _resume_from_checkpoint(self) -> None:
        import torch

        candidates = [folder for folder in _checkpoint_dirs(self.output_dir) if (folder / STATE_FILE).is_file()]
        if not candidates:
            return
        folder = candidates[-1]
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        self._check_compatible(state["config"])
        params = dict(self.transformer.named_parameters())
        with torch.no_grad():
            for name, value in state["trainee"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self._step = self._saved_step = int(state["step"])
        self._losses = [float(x) for x in state["losses"]]
        self._step_seconds = [float(x) for x in state["step_seconds"]]
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available() and len(state["rng_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        log.info("resumed training from %s at step %d", folder, self._step)

    def _check_compatible(self, saved: dict) -> None:
        for key in ("rank", "alpha", "target_modules"):
            mine = self.config.to_json()[key]
            if saved.get(key) != mine:
                raise TrainerError(f"the checkpoint was trained with {key}={saved.get(key)!r}, not {mine!r}")

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
        return render_loss_curve(self._losses)

    # -- teardown ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the trainer's adapters, restore the text encoder and the base model, free the optimizer."""
        if self._closed:
            return
        self._closed = True
        self._remove_adapters()
        for param, flag in self._saved.requires_grad.items():
            param.requires_grad_(flag)
        if self.config.gradient_checkpointing and not self._saved.checkpointing:
            self.transformer.disable_gradient_checkpointing()
        if self._saved.text_encoder_device is not None:
            self.pipe.text_encoder.to(self._saved.text_encoder_device)
        self.optimizer = None
        self._latents, self._embeds, self._trainee_params, self._prompt_cache = [], [], [], {}
        self._probe = None
        self._saved = _SavedFlags()
        _free_memory(self.device)

    def _remove_adapters(self) -> None:
        mine = [name for name in (TRAINEE_ADAPTER, TRAINING_ADAPTER) if name in adapter_names(self.transformer)]
        with quiet_peft():
            if mine:
                self.pipe.delete_adapters(mine)
            if adapter_names(self.transformer):
                apply_adapters(self.transformer, [], [])  # user LoRAs stay loaded, switched off
            remove_peft_if_empty(self.transformer)


def _free_memory(device) -> None:
    import torch

    gc.collect()
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.empty_cache()


def _moving_average(values: list[float], window: int) -> list[float]:
    averaged, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averaged.append(total / min(index + 1, window))
    return averaged


def render_loss_curve(losses: list[float], width: int = 480, height: int = 240) -> bytes:
    """A small PNG: raw losses in grey, their moving average in blue, min/max and step count labelled."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 48, 12, width - 12, height - 24
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    values = [value for value in losses if math.isfinite(value)]
    if values:
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        count = len(values)

        def point(index: int, value: float) -> tuple[float, float]:
            x = left + (right - left) * (index / max(count - 1, 1))
            return x, bottom - (bottom - top) * (value - low) / span

        for index, value in enumerate(values):
            draw.point(point(index, value), fill=(190, 190, 190))
        averaged = _moving_average(values, max(1, count // 20))
        if count > 1:
            draw.line([point(i, v) for i, v in enumerate(averaged)], fill=(30, 90, 200), width=2)
        draw.text((4, top), f"{high:.3f}", fill="black")
        draw.text((4, bottom - 10), f"{low:.3f}", fill="black")
        draw.text((left, bottom + 6), f"loss, {count} steps (moving average of {max(1, count // 20)})", fill="black")
    else:
        draw.text((left + 8, top + 8), "no steps yet", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

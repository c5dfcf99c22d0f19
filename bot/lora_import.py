"""Imported LoRAs: check a .safetensors without executing anything and convert it to our format.

Accepted key layouts: diffusers/peft ``transformer.layers.0.attention.to_q.lora_A.weight``, ai-toolkit/ComfyUI
``diffusion_model.…lora_A.weight`` (``.alpha`` optional: alpha = rank; also ``attention.out`` and a fused
``attention.qkv``) and kohya/musubi ``lora_unet_layers_0_attention_to_q.lora_down.weight`` / ``lora_up`` / ``.alpha``.
Every key must name a linear layer of the model's transformer with fitting shapes (derived from its config: no
torch in the bot). Pickles are refused; the header is parsed by hand, its size capped before it is read; tensors
are read one at a time. The output is what the trainer writes: diffusers keys plus adapter metadata (r,
lora_alpha), so the scaling is kept. Limits (file and header size, rank) are arguments: the callers pass the
bot's settings (LORA_MAX_MB, LORA_MAX_HEADER_KB, LORA_MAX_RANK in bot/settings.py).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from zimage_protocol.constants import tiny_model_dir_name

from .safetensors_io import DTYPE_SIZES, LoraImportError, SafeTensors, decode, encode, loads_bounded, write_safetensors

META_KEY = "lora_adapter_metadata"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# The real Z-Image-Turbo transformer (used when no config.json of the model is on disk).
REAL_CONFIG = {"dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "in_channels": 16, "cap_feat_dim": 2560,
               "all_patch_size": [2], "all_f_patch_size": [1], "siglip_feat_dim": None}
_STORED = {"F64": "F32"}  # every other dtype is kept
_SUFFIXES = {".lora_A.weight": "down", ".lora_down.weight": "down", ".lora_A.default.weight": "down",
             ".lora_B.weight": "up", ".lora_up.weight": "up", ".lora_B.default.weight": "up", ".alpha": "alpha"}
_UNSUPPORTED = re.compile(r"hada_|lokr_|dora_scale|lora_magnitude|lora_mid|\.diff(_b)?$|lora_[AB]\.bias|lora_(up|down)\.bias")
_PREFIXES = (("model.diffusion_model.", "comfyui"), ("diffusion_model.", "comfyui"), ("transformer.", "diffusers"),
             ("base_model.model.", "peft"))
# Numbers read from a file are checked against these before use. Real LoRAs have alpha <= 2 x rank and
# rank <= a few hundred; a larger alpha is a broken or hostile file, and its scale baked into F16 weights
# would overflow. The rank bound is only a sanity bound (LORA_MAX_RANK is the real limit, in convert).
MAX_ALPHA = 10_000.0
MAX_RANK = 1 << 16
MAX_ALPHA_PATTERNS = 1024  # each layer is matched against every pattern: keep that product small
_METADATA_DEPTH = 4  # peft's config: {"alpha_pattern": {...}, "target_modules": [...]}: 2 levels; some slack


# -- the model's layers ----------------------------------------------------------------------------------------

def transformer_config(model: str, data_dir: Path) -> dict:
    """ZIMAGE_MODEL's transformer config: tiny, a local folder, the HF cache, else the known real one."""
    path = None
    if model == "tiny":
        path = data_dir / "models" / tiny_model_dir_name() / "transformer" / "config.json"
    elif Path(model).is_dir():
        path = Path(model) / "transformer" / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "transformer/config.json")
            path = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - no cache: the known architecture below
            pass
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    if path is not None:
        raise LoraImportError("The model is not ready yet; try again in a minute.")
    return dict(REAL_CONFIG)


def expected_layers(config: dict) -> dict[str, tuple[int, int]]:
    """Every nn.Linear of ZImageTransformer2DModel: module name -> (out_features, in_features)."""
    dim, cap, siglip = int(config["dim"]), int(config["cap_feat_dim"]), config.get("siglip_feat_dim")
    hidden, adaln, channels = int(dim / 3 * 8), min(dim, 256), int(config.get("in_channels", 16))
    layers: dict[str, tuple[int, int]] = {}

    def block(prefix: str, modulation: bool) -> None:
        layers.update({f"{prefix}.attention.{name}": (dim, dim) for name in ("to_q", "to_k", "to_v", "to_out.0")})
        layers.update({f"{prefix}.feed_forward.w1": (hidden, dim), f"{prefix}.feed_forward.w2": (dim, hidden),
                       f"{prefix}.feed_forward.w3": (hidden, dim)})
        if modulation:
            layers[f"{prefix}.adaLN_modulation.0"] = (4 * dim, adaln)

    for index in range(int(config.get("n_layers", 30))):
        block(f"layers.{index}", True)
    for index in range(int(config.get("n_refiner_layers", 2))):
        block(f"noise_refiner.{index}", True)
        block(f"context_refiner.{index}", False)
        if siglip:
            block(f"siglip_refiner.{index}", False)
    for patch, frames in zip(config.get("all_patch_size", [2]), config.get("all_f_patch_size", [1]), strict=True):
        key, pixels = f"{patch}-{frames}", frames * patch * patch * channels
        layers.update({f"all_x_embedder.{key}": (dim, pixels), f"all_final_layer.{key}.linear": (pixels, dim),
                       f"all_final_layer.{key}.adaLN_modulation.1": (dim, adaln)})
    layers.update({"t_embedder.mlp.0": (1024, 256), "t_embedder.mlp.2": (adaln, 1024), "cap_embedder.1": (dim, cap)})
    if siglip:
        layers["siglip_embedder.1"] = (dim, int(siglip))
    return layers


# -- conversion ------------------------------------------------------------------------------------------------

@dataclass
class _Layer:
    down: str
    up: str
    alpha: float
    rank: int
    rows: tuple[int, int] | None = None  # a slice of a fused qkv lora_up


@dataclass(frozen=True)
class ImportResult:
    format: str
    rank: int
    alpha: float
    layers: int
    size: int


def _adapter_metadata(metadata: dict[str, str]) -> dict:
    try:
        raw = loads_bounded(metadata.get(META_KEY) or "{}", _METADATA_DEPTH)
    except ValueError:
        raise LoraImportError("The LoRA's adapter metadata is not valid JSON (or nests too deep).") from None
    if not isinstance(raw, dict):
        raise LoraImportError("The LoRA's adapter metadata is not a JSON object.")
    prefixed = {k.removeprefix("transformer."): v for k, v in raw.items() if k.startswith("transformer.")}
    meta = prefixed or raw
    patterns = meta.get("alpha_pattern")
    if isinstance(patterns, dict) and len(patterns) > MAX_ALPHA_PATTERNS:
        raise LoraImportError(f"The adapter metadata has {len(patterns):,} alpha patterns; at most "
                              f"{MAX_ALPHA_PATTERNS:,} are accepted.")
    return meta


def _alpha_number(value: object) -> float | None:
    """A usable lora_alpha (finite, > 0, <= MAX_ALPHA) as a float, or None. No exception for any input."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)  # an int of 400 digits raises OverflowError; "nan" and "1e999" parse
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and 0 < number <= MAX_ALPHA else None


def _alpha_for(meta: dict, module: str, rank: int) -> float:
    """alpha from peft metadata (alpha_pattern keys matched literally as name suffixes: no regex from a file)."""
    if not meta:
        return float(rank)
    if meta.get("use_dora"):
        raise LoraImportError("This is a DoRA adapter; only plain LoRA is supported.")
    alpha = meta.get("lora_alpha", rank)
    patterns = found if isinstance(found := meta.get("alpha_pattern"), dict) else {}
    alpha = next((v for p, v in patterns.items() if module == p or module.endswith("." + str(p))), alpha)
    value = _alpha_number(alpha)
    if value is not None and meta.get("use_rslora"):
        value = _alpha_number(value * rank ** 0.5)
    if value is None:
        raise LoraImportError(f"The adapter metadata gives the layer `{module}` an invalid lora_alpha "
                              f"(it must be a number above 0 and at most {MAX_ALPHA:g}).")
    return value


def _module_of(base: str, layers: dict | None, kohya: dict) -> tuple[str | None, str]:
    for prefix in ("lora_unet_", "lora_transformer_"):
        if base.startswith(prefix):
            return kohya.get(base[len(prefix):]), "kohya"
    fmt = "diffusers"
    for prefix, name in _PREFIXES:
        if base.startswith(prefix):
            base, fmt = base[len(prefix):], name
            break
    if base.endswith(".attention.out"):
        base = base[: -len("out")] + "to_out.0"
    known = layers is None or base in layers or (base.endswith(".attention.qkv") and base[:-3] + "to_q" in layers)
    return (base if known else None), fmt


def plan(st: SafeTensors, layers: dict[str, tuple[int, int]] | None) -> tuple[str, dict[str, _Layer]]:
    """Map every key onto a layer (checked against `layers`, the model's; None = trust the names)."""
    names = [*layers, *(n[: -len("to_q")] + "qkv" for n in layers if n.endswith(".attention.to_q"))] if layers else []
    kohya = {name.replace(".", "_"): name for name in names}
    kohya.update({name.replace(".", "_")[: -len("to_out_0")] + "out": name for name in names if name.endswith("to_out.0")})
    groups: dict[str, dict[str, str]] = {}
    formats: Counter[str] = Counter()
    for key in st.tensors:
        if _UNSUPPORTED.search(key):
            raise LoraImportError(f"`{key}` belongs to a LyCORIS/LoHa/LoKr/DoRA adapter; only plain LoRA is supported.")
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise LoraImportError(f"`{key}` is not a LoRA weight (expected lora_A/lora_B, lora_down/lora_up or alpha).")
        module, fmt = _module_of(key[: -len(suffix)], layers, kohya)
        if module is None:
            raise LoraImportError(f"`{key}` does not match any layer of this model: was the LoRA made for another model?")
        formats[fmt] += 1
        slot = groups.setdefault(module, {})
        if _SUFFIXES[suffix] in slot:
            raise LoraImportError(f"`{key}` repeats a weight of the layer `{module}`.")
        slot[_SUFFIXES[suffix]] = key
    if not groups:
        raise LoraImportError("The file holds no LoRA weights.")
    meta = _adapter_metadata(st.metadata) if formats.most_common(1)[0][0] in ("diffusers", "peft") else {}
    planned: dict[str, _Layer] = {}
    for module, slot in sorted(groups.items()):
        if "down" not in slot or "up" not in slot:
            have = slot.get("down") or slot.get("up") or slot["alpha"]
            raise LoraImportError(f"`{have}` has no matching {'lora_B/lora_up' if 'down' in slot else 'lora_A/lora_down'}.")
        down, up = st.tensors[slot["down"]], st.tensors[slot["up"]]
        rank = down.shape[0] if len(down.shape) == 2 else 0
        fused = module.endswith(".attention.qkv")
        out, inputs = (layers or {}).get(module[:-3] + "to_q" if fused else module, (None, None))
        block = (up.shape[0] // 3 if out is None else out) if fused else None  # the rows of each of q, k and v
        if len(down.shape) != 2 or rank < 1 or (inputs is not None and down.shape[1] != inputs):
            raise LoraImportError(f"`{slot['down']}` has shape {list(down.shape)}; the layer `{module}` needs "
                                  f"[rank, {inputs if inputs is not None else 'in'}].")
        rows = 3 * block if block is not None else out
        if len(up.shape) != 2 or up.shape[1] != rank or (rows is not None and up.shape[0] != rows):
            raise LoraImportError(f"`{slot['up']}` has shape {list(up.shape)}; the layer `{module}` needs "
                                  f"[{rows if rows is not None else 'out'}, {rank}].")
        alpha = _alpha_for(meta, module, rank)
        if "alpha" in slot:
            alpha = _alpha_tensor(st, slot["alpha"])
        parts = [(module[: -len("qkv")] + name, (i * block, (i + 1) * block)) for i, name in enumerate(("to_q", "to_k", "to_v"))
                 ] if block is not None else [(module, None)]
        for target, span in parts:
            if target in planned:
                raise LoraImportError(f"`{slot['down']}` repeats the layer `{target}`.")
            planned[target] = _Layer(slot["down"], slot["up"], alpha, rank, span)
    return formats.most_common(1)[0][0], planned


def _alpha_tensor(st: SafeTensors, key: str) -> float:
    """A `.alpha` tensor's one number. Its shape is checked on the header first: only () or (1,) is read
    (the parser has already checked that the byte range is exactly one itemsize), never a big tensor."""
    info = st.tensors[key]
    value = None
    if info.shape in ((), (1,)):
        value = _alpha_number(float(decode(info.dtype, st.read(key), info.shape).reshape(-1)[0]))
    if value is None:
        raise LoraImportError(f"`{key}` must be one positive number (at most {MAX_ALPHA:g}).")
    return value


def _tensor(st: SafeTensors, key: str, rows: tuple[int, int] | None = None) -> tuple[str, tuple, bytes]:
    """(dtype, shape, bytes) with F64 stored as F32 and non-finite values refused."""
    import numpy as np

    info, data = st.tensors[key], st.read(key)
    shape = info.shape
    if rows is not None:
        width = DTYPE_SIZES[info.dtype] * shape[1]
        data, shape = data[rows[0] * width: rows[1] * width], (rows[1] - rows[0], shape[1])
    values = decode(info.dtype, data, shape)
    if not np.isfinite(values).all():
        raise LoraImportError(f"`{key}` holds NaN or infinite values.")
    if info.dtype == "F64":
        return "F32", shape, values.astype("<f4").tobytes()
    return info.dtype, shape, data


def convert(source: Path, dest: Path, layers: dict[str, tuple[int, int]], *, max_bytes: int, max_header: int,
            max_rank: int) -> ImportResult:
    """Check `source` against the model's layers and write it to `dest` in our diffusers format. Blocking.

    `max_bytes` caps the file (and the converted one), `max_header` its safetensors header; a LoRA whose
    converted rank (its highest layer rank) exceeds `max_rank` is refused before any tensor is read."""
    import numpy as np

    if Path(source).stat().st_size > max_bytes:
        raise LoraImportError(f"The file is larger than the {max_bytes >> 20} MiB limit.")
    with SafeTensors(source, max_header) as st:
        fmt, planned = plan(st, layers)
        rank = max(layer.rank for layer in planned.values())
        if rank > max_rank:
            raise LoraImportError(f"Its rank is {rank}; this bot accepts LoRAs up to rank {max_rank} "
                                  "(the LORA_MAX_RANK setting raises the limit).")
        # One (r, lora_alpha) for the file: lower ranks are zero-padded and other scales baked into lora_B.
        alpha = Counter(layer.alpha * rank / layer.rank for layer in planned.values()).most_common(1)[0][0]
        alpha = int(alpha) if float(alpha).is_integer() else alpha
        entries = []
        for module, layer in planned.items():
            def down(layer=layer):
                dtype, shape, data = _tensor(st, layer.down)
                if layer.rank == rank:
                    return data
                padded = np.zeros((rank, shape[1]), np.float32)
                padded[: layer.rank] = decode(dtype, data, shape)
                return encode(dtype, padded)

            def up(layer=layer):
                dtype, shape, data = _tensor(st, layer.up, layer.rows)
                if layer.rank == rank and layer.alpha * rank == alpha * layer.rank:
                    return data
                padded = np.zeros((shape[0], rank), np.float32)
                with np.errstate(over="ignore"):  # overflow is checked just below, in the stored dtype
                    padded[:, : layer.rank] = decode(dtype, data, shape) * (layer.alpha * rank / (alpha * layer.rank))
                    stored = encode(dtype, padded)
                if not np.isfinite(decode(dtype, stored, padded.shape)).all():
                    raise LoraImportError(f"`{layer.up}`: scaled to the file's common alpha, its values overflow {dtype}.")
                return stored

            down_info, up_info = st.tensors[layer.down], st.tensors[layer.up]
            out = (layer.rows[1] - layer.rows[0]) if layer.rows else up_info.shape[0]
            entries += [(f"transformer.{module}.lora_A.weight", _STORED.get(down_info.dtype, down_info.dtype),
                         (rank, down_info.shape[1]), down),
                        (f"transformer.{module}.lora_B.weight", _STORED.get(up_info.dtype, up_info.dtype), (out, rank), up)]
        config: dict[str, object]  # values of several types (and empty dicts): mypy needs the annotation
        config = {"r": rank, "lora_alpha": alpha, "target_modules": sorted(planned), "lora_dropout": 0.0, "bias": "none",
                  "use_dora": False, "use_rslora": False, "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {}}
        metadata = {"format": "pt", META_KEY: json.dumps({f"transformer.{k}": v for k, v in config.items()}, indent=2,
                                                           sort_keys=True), "zimage_bot.source_format": fmt}
        if sum(DTYPE_SIZES[dtype] * math.prod(shape) for _, dtype, shape, _ in entries) > max_bytes:
            raise LoraImportError(f"Its layers have very different ranks (up to {rank}): converted, it would exceed the "
                                  f"{max_bytes >> 20} MiB limit.")
        size = write_safetensors(Path(dest), entries, metadata)
    return ImportResult(fmt, rank, float(alpha), len(planned), size)


def export_comfyui(source: Path, dest: Path, *, max_header: int) -> int:
    """Our diffusers file as ai-toolkit/ComfyUI keys (`diffusion_model.*`, with `.alpha`). Blocking."""
    with SafeTensors(source, max_header) as st:
        _, planned = plan(st, None)
        entries = []
        for module, layer in planned.items():
            for key, name in ((layer.down, "lora_A.weight"), (layer.up, "lora_B.weight")):
                info = st.tensors[key]
                entries.append((f"diffusion_model.{module}.{name}", info.dtype, info.shape, lambda key=key: st.read(key)))
            entries.append((f"diffusion_model.{module}.alpha", "F32", (), lambda a=layer.alpha: struct.pack("<f", a)))
        return write_safetensors(Path(dest), entries, {"format": "pt"})


def describe(path: Path, *, max_header: int) -> dict:
    """rank, alpha, layers and format of a stored LoRA (header only, cheap). Blocking."""
    with SafeTensors(path, max_header) as st:
        meta = _adapter_metadata(st.metadata)
        downs = [info for key, info in st.tensors.items() if key.endswith("lora_A.weight")]
        rank, alpha = meta.get("r"), meta.get("lora_alpha")
        if rank is None:
            rank = max((info.shape[0] if info.shape else 0 for info in downs), default=0)
        elif type(rank) is not int or not 1 <= rank <= MAX_RANK:
            raise LoraImportError("The LoRA's adapter metadata gives an invalid rank.")
        if alpha is not None and _alpha_number(alpha) is None:
            raise LoraImportError("The LoRA's adapter metadata gives an invalid lora_alpha.")
        return {"rank": rank, "alpha": alpha, "layers": len(downs), "format": st.metadata.get("zimage_bot.source_format")}

"""Hostile .safetensors files (issue #18): every one is refused with a LoraImportError, quickly and cheaply.

No tiny model needed: the layers come from a small transformer config.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from bot import lora_import
from bot.lora_import import META_KEY, REAL_CONFIG, LoraImportError, expected_layers
from bot.safetensors_io import SafeTensors

MAX_HEADER = 1 << 20
LIMITS = {"max_bytes": 64 << 20, "max_header": MAX_HEADER, "max_rank": 64}
LAYERS = expected_layers({**REAL_CONFIG, "dim": 32, "n_layers": 2, "n_refiner_layers": 1, "cap_feat_dim": 32})
Q = "layers.0.attention.to_q"


def raw_file(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    """A file with exactly this header (a dict is dumped as JSON; bytes are written as they are)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def tensors_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> Path:
    """A well-formed file of float32 tensors (shapes as given, 0-d allowed)."""
    header, data = {"__metadata__": metadata or {}}, b""
    for key, value in tensors.items():
        raw = np.ascontiguousarray(value, "<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(np.shape(value)), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return raw_file(path, header, data)


def lora(prefix: str = "transformer.", alpha: np.ndarray | None = None, rank: int = 4) -> dict[str, np.ndarray]:
    out = {f"{prefix}{Q}.lora_A.weight": np.full((rank, 32), 0.01), f"{prefix}{Q}.lora_B.weight": np.full((32, rank), 0.01)}
    if alpha is not None:
        out[f"{prefix}{Q}.alpha"] = alpha
    return out


def refused(call, *args, seconds: float = 1.0, **kwargs) -> str:
    """The LoraImportError message of call(...), which must come within `seconds` (and not be another exception)."""
    start = time.perf_counter()
    with pytest.raises(LoraImportError) as error:
        call(*args, **kwargs)
    assert time.perf_counter() - start < seconds, "the refusal took too long"
    message = str(error.value)
    assert len(message) < 400, "the message must fit a Discord reply"
    return message


def open_header(path: Path) -> None:
    with SafeTensors(path, MAX_HEADER):
        pass


# -- 1. the header parser ------------------------------------------------------------------------------------

def test_a_tensor_with_a_hundred_thousand_dimensions_is_refused_before_any_arithmetic(tmp_path):
    """math.prod over 80k dims of 2**32-1 held the GIL for seconds; the dimension count is checked first."""
    path = raw_file(tmp_path / "dims.safetensors",
                    {"a": {"dtype": "F32", "shape": [4294967295] * 80_000, "data_offsets": [0, 4]}}, b"\0" * 4)
    assert "dimensions" in refused(open_header, path, seconds=0.5)


def entry(**changes) -> dict:
    return {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], **changes}}


@pytest.mark.parametrize("case, header, fragment", [
    ("unhashable dtype", entry(dtype=["F32"]), "malformed"),
    ("dict dtype", entry(dtype={"F32": 1}), "malformed"),
    ("unknown dtype", entry(dtype="I64"), "only F16, BF16, F32 and F64"),
    ("long dtype", entry(dtype="X" * 100_000), "only F16, BF16, F32 and F64"),
    ("bool dim", entry(shape=[True]), "malformed"),
    ("float dim", entry(shape=[1.0]), "malformed"),
    ("negative dim", entry(shape=[-1]), "malformed"),
    ("huge dim", entry(shape=[10 ** 30, 0]), "malformed"),
    ("five dims", entry(shape=[1, 1, 1, 1, 1]), "dimensions"),
    ("shape not a list", entry(shape="1"), "malformed"),
    ("bool offset", entry(data_offsets=[False, 4]), "malformed"),
    ("one offset", entry(data_offsets=[4]), "malformed"),
    ("offsets reversed", entry(data_offsets=[4, 0]), "malformed"),
    ("offset past the end", entry(data_offsets=[0, 10 ** 30]), "malformed"),
    ("entry not an object", {"a": [1, 2]}, "malformed"),
    ("missing field", {"a": {"dtype": "F32", "shape": [1]}}, "malformed"),
    ("metadata list", {"__metadata__": ["a"], **entry()}, "metadata"),
    ("metadata value", {"__metadata__": {"a": 1}, **entry()}, "metadata"),
    ("metadata nested", {"__metadata__": {"a": {"b": "c"}}, **entry()}, "metadata"),
    ("long key", {"k" * 10_000: entry()["a"]}, "name"),
    ("control key", {"a\nb": entry()["a"]}, "name"),
    ("too many tensors", {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(5000)}, "tensors"),
])
def test_malformed_headers_are_refused_with_a_clear_message(case, header, fragment, tmp_path):
    path = raw_file(tmp_path / "bad.safetensors", header, b"\0" * 4)
    assert fragment in refused(open_header, path)


@pytest.mark.parametrize("case, raw", [
    ("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("deep arrays in a shape", b'{"a":{"dtype":"F32","shape":' + b"[" * 50_000 + b"]" * 50_000 + b',"data_offsets":[0,4]}}'),
    ("depth four", b'{"a":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}}'),
    ("NaN", b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}'),
    ("huge int", b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}'),
    ("duplicate key", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                      b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'),
    ("not utf-8", b'{"\xff":1}'),
])
def test_json_that_nests_deep_or_bends_the_rules_is_refused(case, raw, tmp_path):
    path = raw_file(tmp_path / "bad.safetensors", raw, b"\0" * 4)
    refused(open_header, path)


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    """The nesting pre-scan skips string contents: a metadata value full of brackets is fine."""
    note = '[[[[{{{{\\"]]] a quote and a backslash inside'
    path = tensors_file(tmp_path / "ok.safetensors", lora(), {"note": note})
    with SafeTensors(path, MAX_HEADER) as st:
        assert st.metadata["note"] == note
        assert st.tensors[f"transformer.{Q}.lora_A.weight"].shape == (4, 32)


# -- 2. alpha tensors are checked on the header --------------------------------------------------------------

@pytest.mark.parametrize("alpha", [np.zeros(1 << 20), np.zeros((2, 2)), np.zeros((1, 1))])
def test_an_alpha_that_is_not_one_number_is_refused_without_reading_it(alpha, tmp_path, monkeypatch):
    reads = []
    original_read = SafeTensors.read
    monkeypatch.setattr(SafeTensors, "read", lambda self, key: reads.append(key) or original_read(self, key))
    path = tensors_file(tmp_path / "alpha.safetensors", lora("diffusion_model.", alpha))
    message = refused(lora_import.convert, path, tmp_path / "out.safetensors", LAYERS, **LIMITS)
    assert "must be one positive number" in message
    assert f"diffusion_model.{Q}.alpha" not in reads


@pytest.mark.parametrize("alpha", [np.float32(8.0), np.array([8.0])])
def test_a_scalar_alpha_of_shape_empty_or_one_is_used(alpha, tmp_path):
    path = tensors_file(tmp_path / "alpha.safetensors", lora("diffusion_model.", alpha))
    assert lora_import.convert(path, tmp_path / "out.safetensors", LAYERS, **LIMITS).alpha == 8.0


# -- 3. the converters: a result or a LoraImportError ---------------------------------------------------------

def peft(**config) -> dict:
    return {"format": "pt", META_KEY: json.dumps({"r": 4, "lora_alpha": 4, **config})}


@pytest.mark.parametrize("metadata", [
    peft(lora_alpha=10 ** 400),
    peft(lora_alpha=1e400),
    peft(lora_alpha=-8),
    peft(lora_alpha=0),
    peft(lora_alpha=True),
    peft(lora_alpha=[8]),
    peft(lora_alpha="nan"),
    peft(lora_alpha=1e9),
    peft(alpha_pattern={Q: 10 ** 400}),
    peft(alpha_pattern={f"p{i}": 1 for i in range(20_000)}),
    {META_KEY: "[1, 2]"},
    {META_KEY: "7"},
    {META_KEY: "{" * 10_000},
    {META_KEY: '{"a":' * 10_000 + "1" + "}" * 10_000},
    {META_KEY: "not json"},
])
def test_bad_adapter_metadata_is_refused(metadata, tmp_path):
    path = tensors_file(tmp_path / "meta.safetensors", lora(), metadata)
    refused(lora_import.convert, path, tmp_path / "out.safetensors", LAYERS, **LIMITS)
    refused(lora_import.export_comfyui, path, tmp_path / "comfy.safetensors", max_header=MAX_HEADER)
    assert not list(tmp_path.glob("*out*")) and not list(tmp_path.glob("*comfy*"))


@pytest.mark.parametrize("config", [
    {"r": "4"}, {"r": -1}, {"r": 0}, {"r": 10 ** 400}, {"r": 4.5}, {"r": True}, {"r": [4]},
    {"lora_alpha": 10 ** 400}, {"lora_alpha": -1}, {"lora_alpha": {"a": 1}},
])
def test_describe_refuses_bad_rank_or_alpha(config, tmp_path):
    path = tensors_file(tmp_path / "meta.safetensors", lora(), {META_KEY: json.dumps(config)})
    refused(lora_import.describe, path, max_header=MAX_HEADER)


def test_describe_reads_a_good_header(tmp_path):
    path = tensors_file(tmp_path / "ok.safetensors", lora(), peft(r=4, lora_alpha=8))
    assert lora_import.describe(path, max_header=MAX_HEADER) == {"rank": 4, "alpha": 8, "layers": 1, "format": None}


def test_a_scale_that_overflows_float16_when_baked_in_is_refused(tmp_path):
    """Mixed alphas are baked into lora_B; values pushed past the dtype's range are refused, not stored as inf."""
    k = "layers.0.attention.to_k"
    tensors = {f"diffusion_model.{Q}.lora_A.weight": np.ones((4, 32)), f"diffusion_model.{Q}.lora_B.weight": np.ones((32, 4)),
               f"diffusion_model.{Q}.alpha": np.float32(1.0),
               f"diffusion_model.{k}.lora_A.weight": np.ones((4, 32)), f"diffusion_model.{k}.lora_B.weight": np.ones((32, 4)),
               f"diffusion_model.{k}.alpha": np.float32(1.0), "diffusion_model.layers.0.attention.to_v.alpha": np.float32(9000.0),
               "diffusion_model.layers.0.attention.to_v.lora_A.weight": np.ones((4, 32)),
               "diffusion_model.layers.0.attention.to_v.lora_B.weight": np.full((32, 4), 60000.0)}
    header, data = {}, b""
    for key, value in tensors.items():  # all F16, so the baked-in scale overflows
        raw = np.ascontiguousarray(value, "<f2").tobytes()
        header[key] = {"dtype": "F16", "shape": list(np.shape(value)), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    path = raw_file(tmp_path / "f16.safetensors", header, data)
    assert "overflow" in refused(lora_import.convert, path, tmp_path / "out.safetensors", LAYERS, **LIMITS)

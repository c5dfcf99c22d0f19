"""Fuzzing the parsers members can feed (issue #18): the safetensors header, the LoRA converters, the photo zip intake.

Whatever the input, each gives a result or its module's clear refusal (LoraImportError, IntakeError) within
the deadline, and never another exception. Deterministic (derandomize, no example database) and bounded, so
the file runs in well under a minute on two cores.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import warnings
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from intake_helpers import png_header_bomb
from PIL import Image

from bot import lora_import
from bot.lora_import import META_KEY, REAL_CONFIG, expected_layers
from bot.safetensors_io import DTYPE_SIZES, LoraImportError, SafeTensors, encode
from bot.training.intake import IntakeError, IntakeLimits, IntakeReport, prepare_dataset


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=timedelta(seconds=2), derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


MAX_HEADER = 1 << 16
LAYERS = expected_layers({**REAL_CONFIG, "dim": 32, "n_layers": 2, "n_refiner_layers": 1, "cap_feat_dim": 32})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
sizes = st.integers(-2, 2 ** 40) | st.sampled_from([0, 1, 4, 32, 10 ** 30])


def write(folder: Path, raw_header: bytes, data: bytes = b"", length: int | None = None) -> Path:
    path = folder / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw_header) if length is None else length) + raw_header + data)
    return path


def parse_or_refuse(path: Path) -> None:
    try:
        with SafeTensors(path, MAX_HEADER) as parsed:
            assert all(key in parsed.tensors for key in parsed.tensors)
    except LoraImportError:
        pass


# -- the header parser ------------------------------------------------------------------------------------------

entries = st.fixed_dictionaries({
    "dtype": st.sampled_from([*DTYPE_SIZES, "I8", ""]) | json_values,
    "shape": st.lists(sizes, max_size=6) | json_values,
    "data_offsets": st.lists(sizes, max_size=3) | json_values,
}) | json_values
headers = st.dictionaries(st.text(max_size=20), entries, max_size=6) | st.builds(
    lambda h, m: {**h, "__metadata__": m}, st.dictionaries(st.text(max_size=20), entries, max_size=4),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4) | json_values)


@fuzz(150)
@given(header=headers, data=st.binary(max_size=64))
def test_structured_headers(header, data):
    with tempfile.TemporaryDirectory() as folder:
        parse_or_refuse(write(Path(folder), json.dumps(header).encode(), data))


@fuzz(100)
@given(raw=st.binary(max_size=300) | st.text(alphabet='[]{}":,0aF3 \\', max_size=3000).map(str.encode),
       data=st.binary(max_size=32), length=st.none() | st.integers(0, 2 ** 64 - 1))
def test_raw_header_bytes(raw, data, length):
    with tempfile.TemporaryDirectory() as folder:
        parse_or_refuse(write(Path(folder), raw, data, length))


@fuzz(60)
@given(file=st.binary(max_size=200))
def test_any_file(file):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.safetensors"
        path.write_bytes(file)
        parse_or_refuse(path)


# -- the LoRA converters --------------------------------------------------------------------------------------

MODULES = ["layers.0.attention.to_q", "layers.1.feed_forward.w2", "layers.0.attention.qkv", "layers.1.attention.out",
           "noise_refiner.0.adaLN_modulation.0", "t_embedder.mlp.0", "cap_embedder.1", "nowhere"]
# (prefix, down suffix, up suffix, alpha suffix) of the formats in the wild
FAMILIES = [("transformer.", ".lora_A.weight", ".lora_B.weight", ".alpha"),
            ("diffusion_model.", ".lora_A.weight", ".lora_B.weight", ".alpha"),
            ("lora_unet_", ".lora_down.weight", ".lora_up.weight", ".alpha"),
            ("base_model.model.", ".lora_A.default.weight", ".lora_B.default.weight", ".alpha")]
SUFFIXES = [".lora_A.weight", ".lora_B.weight", ".lora_up.weight", ".alpha", ".hada_w1_a", ".weight", ".lora_A.bias"]
dims = st.sampled_from([0, 1, 2, 3, 4, 8, 32, 85, 96, 256])
plain = st.sampled_from([0.01, 0.5, 1.0, 4.0, 8.0])
values = plain | plain | plain | st.floats(width=32) | st.sampled_from([0.0, -1.0, 6e4, 1e30, float("nan"), float("inf")])
numbers = st.integers(-2, 100) | st.floats() | st.sampled_from([10 ** 400, "8", "nan", True, None, [4]])


def layer_shape(module: str) -> tuple[int, int]:
    """(out, in) of a module name as the converter sees it (fused qkv: three outputs); unknown: small junk."""
    if module.endswith(".qkv"):
        out, inputs = LAYERS[module[: -len("qkv")] + "to_q"]
        return 3 * out, inputs
    return LAYERS.get(module.replace("attention.out", "attention.to_out.0"), (4, 4))


@st.composite
def lora_files(draw) -> tuple[dict, dict]:
    """Mostly well-formed LoRAs in one of the formats, then perturbed: a wrong dim, odd alphas, odd values, junk keys."""
    prefix, down, up, alpha = draw(st.sampled_from(FAMILIES))
    tensors = {}
    for module in draw(st.lists(st.sampled_from(MODULES), min_size=1, max_size=3, unique=True)):
        stem = prefix + (module.replace(".", "_") if prefix == "lora_unet_" else module)
        rank, (out, inputs) = draw(st.integers(1, 10)), layer_shape(module)
        shapes = {down: [rank, inputs], up: [out, rank]}
        if draw(st.integers(0, 5)) == 0:  # one wrong dimension
            suffix = draw(st.sampled_from([down, up]))
            shapes[suffix][draw(st.integers(0, 1))] = draw(dims)
        for suffix, shape in shapes.items():
            tensors[stem + suffix] = (draw(st.sampled_from(list(DTYPE_SIZES))), tuple(shape), draw(values))
        alpha_shape = draw(st.sampled_from([None, None, None, (), (), (1,), (2,), (1, 1)]))
        if alpha_shape is not None:
            tensors[stem + alpha] = (draw(st.sampled_from(list(DTYPE_SIZES))), alpha_shape, draw(values))
    if draw(st.integers(0, 4)) == 0:  # a stray key
        name = draw(st.sampled_from(MODULES)) + draw(st.sampled_from(SUFFIXES))
        tensors[draw(st.sampled_from(["", "transformer.", "lora_unet_"])) + name] = (
            "F32", tuple(draw(st.lists(dims, max_size=2))), draw(values))
    config = draw(st.dictionaries(st.sampled_from(["r", "lora_alpha", "alpha_pattern", "use_rslora", "use_dora"]),
                                  numbers | json_values, max_size=5))
    metadata = draw(st.sampled_from([{}, {"format": "pt"}, {META_KEY: json.dumps(config)},
                                     {META_KEY: json.dumps({f"transformer.{k}": v for k, v in config.items()})},
                                     {META_KEY: "[1]"}]))
    return tensors, metadata


def lora_file(folder: Path, tensors: dict, metadata: dict) -> Path:
    header, data = {"__metadata__": metadata}, b""
    for key, (dtype, shape, value) in tensors.items():
        with np.errstate(all="ignore"):
            raw = encode(dtype, np.full(shape, value, np.float32))
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return write(folder, json.dumps(header).encode(), data)


@fuzz(200)
@given(lora=lora_files())
def test_converters(lora):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        path = lora_file(folder, *lora)
        for call in (lambda: lora_import.convert(path, folder / "out.safetensors", LAYERS, max_bytes=1 << 22,
                                                 max_header=MAX_HEADER, max_rank=8),
                     lambda: lora_import.describe(path, max_header=MAX_HEADER),
                     lambda: lora_import.export_comfyui(path, folder / "comfy.safetensors", max_header=MAX_HEADER)):
            try:
                call()
            except LoraImportError:
                pass
        if (folder / "out.safetensors").exists():  # what convert writes is itself a good LoRA
            assert lora_import.describe(folder / "out.safetensors", max_header=MAX_HEADER)["layers"] >= 1
            lora_import.export_comfyui(folder / "out.safetensors", folder / "again.safetensors", max_header=MAX_HEADER)


# -- the zip intake --------------------------------------------------------------------------------------------

def image_bytes(fmt: str, size: tuple[int, int], mode: str, colour: int) -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, size, colour)
    image.save(buffer, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return buffer.getvalue()


images = st.builds(image_bytes, st.sampled_from(["PNG", "JPEG", "WEBP", "PNG", "JPEG", "GIF", "BMP"]),
                   st.tuples(st.integers(56, 160), st.integers(56, 160)), st.sampled_from(["RGB", "L"]), st.integers(0, 255))
contents = (images | images | images | images.map(lambda data: data[: len(data) // 2]) | st.binary(max_size=200)
            | st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"PK\x03\x04", png_header_bomb(3000, 3000),
                               b"a caption", "caf\u00e9 \u200b".encode()]))
names = (st.sampled_from(["a.jpg", "b.png", "a.txt", "dir/", "dir/c.webp", "dir/c.txt", "__MACOSX/._a.jpg", ".DS_Store",
                          "../up.jpg", "/abs.png", "C:/x.png", "n.zip", "a\\b.jpg", "Thumbs.db"])
         | st.text(min_size=1, max_size=24) | st.from_regex(r"[0-9\u00b2\u0663]{1,40}\.(jpg|txt)", fullmatch=True))


def zip_bytes(items: list[tuple[str, bytes]], compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are part of the fuzzing
        for name, data in items:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def intake(archive: bytes, caption: str | None, min_images: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "photos.zip").write_bytes(archive)
        try:
            report = prepare_dataset(folder / "photos.zip", folder / "job", name="alice", default_caption=caption,
                                     limits=IntakeLimits(min_images=min_images, max_images=5))
            assert isinstance(report, IntakeReport) and len(report.summary()) < 1500
        except IntakeError as error:
            assert len(str(error)) < 1500
        written = {path.relative_to(folder).parts[0] for path in folder.rglob("*")}
        assert written <= {"photos.zip", "job"}, written


def test_entry_names_with_odd_or_huge_numbers_sort():
    """Found by the fuzzing: '1²1' made the natural sort call int('²'); a 5000-digit name exceeds int()'s limit."""
    items = [("1\u00b21.jpg", b"x"), ("7" * 5000 + ".jpg", b"x"), ("\u0663.jpg", b"x"), ("10.jpg", b"x"), ("9.jpg", b"x")]
    intake(zip_bytes(items, zipfile.ZIP_STORED), None, 0)


def test_an_entry_without_a_name_is_refused():
    """Found by the fuzzing: a nameless entry (a name cut at a NUL byte) made ZipInfo.is_dir() raise IndexError."""
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "photos.zip"
        path.write_bytes(zip_bytes([("", b"x"), ("a.jpg", b"y")], zipfile.ZIP_STORED))
        with pytest.raises(IntakeError, match="without a name"):
            prepare_dataset(path, Path(name) / "job", name="alice", default_caption=None)


@fuzz(100)
@given(items=st.lists(st.tuples(names, contents), max_size=8),
       compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
       caption=st.none() | st.text(max_size=20), min_images=st.integers(0, 2))
def test_zip_intake(items, compression, caption, min_images):
    intake(zip_bytes(items, compression), caption, min_images)


@fuzz(100)
@given(items=st.lists(st.tuples(names, contents), min_size=1, max_size=4),
       edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.none() | st.integers(0, 10 ** 6))
def test_damaged_zips(items, edits, cut):
    archive = bytearray(zip_bytes(items, zipfile.ZIP_DEFLATED))
    for position, byte in edits:
        archive[position % len(archive)] = byte
    if cut is not None:
        archive = archive[: cut % (len(archive) + 1)]
    intake(bytes(archive), None, 0)

"""img2img and outpainting on the tiny model (gpu/variants.py): sizes, progress, shared weights, the canvas."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gpu.engine import ImageEngine
from gpu.png import encode_png
from gpu.variants import SourceRefused, outpaint_canvas, steps_run
from zimage_protocol.errors import ProtocolError
from zimage_protocol.messages import GenerateParams, SourceImage


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = ImageEngine("tiny", tmp_path_factory.mktemp("data"))
    engine.load_tokenizer()
    engine.load()
    return engine


def source_png(engine, folder, width=128, height=128, seed=1):
    [made] = engine.generate(GenerateParams(prompt="a fox", width=width, height=height, steps=2, seeds=[seed]))
    path = folder / "source.png"
    path.write_bytes(encode_png(made.image, {}))
    return path, made.image


def test_vary_starts_from_the_picture_with_the_weights_shared(engine, tmp_path):
    path, parent = source_png(engine, tmp_path)
    steps: list[tuple[int, int]] = []
    subtle = SourceImage(path=str(path), strength=0.35, mode="vary_subtle", parent="7")
    [made] = engine.generate(GenerateParams(prompt="a fox", width=128, height=128, steps=8, seeds=[5], source=subtle),
                             on_step=lambda step, total: steps.append((step, total)))
    assert made.image.size == (128, 128)
    assert steps == [(step, 3) for step in range(1, 4)]  # 8 steps at 0.35: the last 3 run
    assert made.image.tobytes() != parent.tobytes()
    variants = engine.variants()
    assert variants.img2img().transformer is engine.pipe.transformer and variants.img2img().vae is engine.pipe.vae
    again = engine.generate(GenerateParams(prompt="a fox", width=128, height=128, steps=8, seeds=[5], source=subtle))
    assert again[0].image.tobytes() == made.image.tobytes()  # same seed, same pixels


def test_the_picture_pipelines_leave_the_warm_pipelines_dtypes_alone(tmp_path):
    """A bf16 engine (as on a GPU) stays bf16 once its img2img and inpaint pipelines exist, and a Vary runs on it
    (diffusers' from_pipe would cast every shared module to float32: gpu/variants.py Variants._derive)."""
    import torch

    bf16 = ImageEngine("tiny", tmp_path / "data")
    bf16.load_tokenizer()
    bf16.load()
    bf16.pipe.to(dtype=torch.bfloat16)
    before = {name: tensor.dtype for name, tensor in bf16.pipe.transformer.state_dict().items()}
    bf16.variants().img2img()
    bf16.variants().inpaint()
    assert {name: tensor.dtype for name, tensor in bf16.pipe.transformer.state_dict().items()} == before
    assert {tensor.dtype for tensor in bf16.pipe.vae.parameters()} == {torch.bfloat16}
    assert {tensor.dtype for tensor in bf16.pipe.text_encoder.parameters()} == {torch.bfloat16}
    path, _ = source_png(bf16, tmp_path)
    vary = SourceImage(path=str(path), strength=0.5, mode="vary_strong")
    [made] = bf16.generate(GenerateParams(prompt="a fox", width=128, height=128, steps=2, seeds=[3], source=vary))
    assert made.image.size == (128, 128)


def test_upscale_doubles_the_size_with_a_tiled_vae_that_is_switched_off_after(engine, tmp_path, monkeypatch):
    path, _ = source_png(engine, tmp_path)
    monkeypatch.setattr("gpu.variants.TILED_DECODE_PIXELS", 128 * 128)
    tiling: list[bool] = []
    original = engine.pipe.vae.decode

    def decode(*args, **kwargs):
        tiling.append(engine.pipe.vae.use_tiling)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.pipe.vae, "decode", decode)
    upscale = SourceImage(path=str(path), strength=0.35, mode="upscale", parent="7")
    [made] = engine.generate(GenerateParams(prompt="a fox", width=256, height=256, steps=4, seeds=[1], source=upscale))
    assert made.image.size == (256, 256) and tiling == [True] and engine.pipe.vae.use_tiling is False


@pytest.mark.parametrize("spec", [{"zoom": 2.0}, {"zoom": 1.5}, {"direction": "left"}, {"direction": "down"}])
def test_outpainting_keeps_the_size(engine, tmp_path, spec):
    path, parent = source_png(engine, tmp_path, width=128, height=96)
    source = SourceImage(path=str(path), strength=1.0, mode="zoom" if "zoom" in spec else "pan", **spec)
    [made] = engine.generate(GenerateParams(prompt="a fox", width=128, height=96, steps=2, seeds=[3], source=source))
    assert made.image.size == (128, 96) and made.image.tobytes() != parent.tobytes()


def test_the_canvas_and_mask_of_a_pan_and_a_zoom():
    picture = Image.new("RGB", (256, 128), (200, 10, 10))
    canvas, mask = outpaint_canvas(picture, 256, 128, SourceImage(path="x", strength=1, mode="pan", direction="left"))
    # the view moves left: a 64 px strip of new canvas on the left, drawn with a 16 px seam into the old picture
    assert mask.getpixel((0, 64)) == 255 and mask.getpixel((64 + 15, 64)) == 255 and mask.getpixel((64 + 16, 64)) == 0
    assert mask.getpixel((255, 0)) == 0 and canvas.getpixel((200, 64)) == (200, 10, 10)
    canvas, mask = outpaint_canvas(picture, 256, 128, SourceImage(path="x", strength=1, mode="zoom", zoom=2.0))
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((128, 64)) == 0 and canvas.getpixel((128, 64)) == (200, 10, 10)


def test_steps_run_follows_diffusers():
    assert [steps_run(8, s) for s in (0.35, 0.7, 1.0)] == [3, 6, 8]
    assert steps_run(1, 0.1) == 1


def test_a_bad_source_is_refused_with_a_message(engine, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"GIF89a" + b"\0" * 100)
    with pytest.raises(SourceRefused, match="cannot be decoded"):
        engine.generate(GenerateParams(prompt="x", width=64, height=64, steps=1, seeds=[1],
                                       source=SourceImage(path=str(bad), strength=0.5, mode="image")))
    with pytest.raises(SourceRefused, match="cannot be read"):
        engine.generate(GenerateParams(prompt="x", width=64, height=64, steps=1, seeds=[1],
                                       source=SourceImage(path=str(tmp_path / "gone.png"), strength=0.5, mode="image")))


@pytest.mark.parametrize("source", [
    {"path": "x", "strength": 0, "mode": "upscale"},
    {"path": "x", "strength": 1.5, "mode": "upscale"},
    {"path": "x", "strength": float("nan"), "mode": "upscale"},
    {"path": "x", "strength": 0.5, "mode": "sideways"},
    {"path": "x", "strength": 0.5, "mode": "pan", "direction": "diagonal"},
    {"path": "x", "strength": 0.5, "mode": "zoom", "zoom": 100},
    {"path": "", "strength": 0.5, "mode": "zoom"},
    {"path": "x", "strength": 0.5, "mode": "zoom", "size": 1 << 40},
    "a string",
])
def test_the_protocol_refuses_bad_sources(source):
    with pytest.raises(ProtocolError):
        GenerateParams.from_json({"prompt": "p", "width": 64, "height": 64, "steps": 1, "seeds": [1], "source": source})


def test_a_source_round_trips_and_tags_the_png():
    source = SourceImage(path="/x.png", strength=0.7, mode="pan", direction="up", parent="12")
    params = GenerateParams(prompt="p", width=64, height=64, steps=1, seeds=[1], source=source)
    assert GenerateParams.from_json(params.to_json()) == params
    assert source.png_text() == {"source_mode": "pan", "strength": 0.7, "parent_job": "12", "direction": "up"}
    assert GenerateParams.from_json({"prompt": "p", "width": 64, "height": 64, "steps": 1, "seeds": [1]}).source is None
    Image.open(io.BytesIO(encode_png(Image.new("RGB", (16, 16)), source.png_text()))).load()

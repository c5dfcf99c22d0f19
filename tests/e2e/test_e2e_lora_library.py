"""The LoRA library end to end: /lora import, privacy, share, stacking, /imagine lora:, rename, export, delete."""

from __future__ import annotations

import io
import pickle

import aiohttp
import pytest
import torch

from e2e_helpers import pixels, pngs, queued_job, refusal_text, wait_refusal, wait_result

pytestmark = pytest.mark.e2e

# LORA_HOTSWAP=on: the worker swaps LoRAs into fixed slots, as it does when compiled (CUDA).
ENV = {"RATE_LIMIT_COUNT": "100", "MAX_QUEUED_PER_USER": "5", "LORA_MAX_STACK": "2", "LORA_HOTSWAP": "on"}


def peft_state(tiny_models_dir, seed: int) -> dict:
    from diffusers import ZImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = ZImageTransformer2DModel.from_pretrained(tiny_models_dir / "tiny-v1", subfolder="transformer")
    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"]), "x")
    return {key: value * 0.5 for key, value in get_peft_model_state_dict(transformer, adapter_name="x").items()}


def safetensors_bytes(tensors: dict) -> bytes:
    import safetensors.torch

    return safetensors.torch.save({key: value.clone().contiguous() for key, value in tensors.items()})


@pytest.fixture(scope="module")
def lora_files(tiny_models_dir) -> dict[str, bytes]:
    """Two different LoRAs: one in kohya format, one in ai-toolkit format (no alpha)."""
    kohya = {}
    for key, value in peft_state(tiny_models_dir, 1).items():
        module, part = key.rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
        kohya[f"{stem}.alpha"] = torch.tensor(4.0)
    toolkit = {f"diffusion_model.{key}": value for key, value in peft_state(tiny_models_dir, 2).items()}
    return {"kohya": safetensors_bytes(kohya), "toolkit": safetensors_bytes(toolkit),
            "wrong": safetensors_bytes({"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 48),
                                        "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.zeros(32, 4)})}


BOT_ENV = ENV


async def say(fake, command: str, options: dict | None = None, user=None, **kwargs) -> str:
    """The text of the (ephemeral) answer, immediate or after deferring."""
    ix = await fake.slash_command(command, options or {}, user=user or fake.alice, **kwargs)
    first = await ix.wait_response(timeout=5)
    if first["type"] == 4:
        return first["data"]["content"]
    # /imagine refuses after its public "thinking…": deleted, and an ephemeral follow-up says why
    return await fake.wait_for(lambda: refusal_text(ix) or (ix.original.content if not ix.original.loading else None),
                               timeout=60, what="the answer")


async def image(fake, user=None, **options) -> bytes:
    ix = await fake.slash_command("imagine", {"prompt": "a hill", "seed": 5, "steps": 2, **options}, user=user or fake.alice)
    [result] = await wait_result(fake, await queued_job(ix))
    return pixels(pngs(result)[0])


async def names(fake, user, command="lora use") -> list[str]:
    return [choice["value"] for choice in await fake.autocomplete(command, {"name": ""}, focused="name", user=user)]


async def test_import_privacy_share_and_stacking(fake, bot, lora_files):
    imported = await say(fake, "lora import", {"name": "ink"}, attachments={"file": ("ink.safetensors", lora_files["kohya"])})
    assert "Imported `ink` (kohya format): rank 4" in imported
    imported = await say(fake, "lora import", {"name": "oil"}, attachments={"file": ("oil.safetensors", lora_files["toolkit"])})
    assert "Imported `oil` (comfyui format)" in imported

    # Refusals: pickle, wrong shapes, a taken name, two sources, private addresses.
    assert "pickle" in await say(fake, "lora import", {"name": "pk"}, attachments={"file": ("x.pt", pickle.dumps({}))})
    wrong = await say(fake, "lora import", {"name": "wrong"}, attachments={"file": ("w.safetensors", lora_files["wrong"])})
    assert wrong.startswith("❌") and "`diffusion_model.layers.0.attention.to_q.lora_A.weight` has shape [4, 48]" in wrong
    assert "already exists" in await say(fake, "lora import", {"name": "ink"},
                                         attachments={"file": ("a.safetensors", lora_files["kohya"])})
    assert "not both" in await say(fake, "lora import", {"name": "two", "url": "https://example.com/a.safetensors"},
                                   attachments={"file": ("a.safetensors", lora_files["kohya"])})
    assert "allowed" in await say(fake, "lora import", {"name": "local", "url": "https://127.0.0.1/a.safetensors"})

    # Private: bob sees nothing of alice's LoRAs, whatever he tries.
    assert "no LoRAs" in await say(fake, "lora list", user=fake.bob)
    assert await names(fake, fake.bob) == [] and await names(fake, fake.bob, "lora info") == []
    for command in ("lora use", "lora info", "lora export", "lora delete", "lora share"):
        assert "You have no LoRA `ink`" in await say(fake, command, {"name": "ink"}, user=fake.bob), command
    assert "no LoRA `ink`" in await say(fake, "imagine", {"prompt": "x", "lora": "ink"}, user=fake.bob)

    base = await image(fake)
    assert "now use `ink`" in await say(fake, "lora use", {"name": "ink"})
    with_ink = await image(fake)
    assert "now use `ink` at 0.8 + `oil` at 1.2." in await say(fake, "lora use", {"name": "oil", "scale": 1.2})
    stacked = await image(fake)
    assert await say(fake, "lora clear", {"name": "ink"}) == "Stopped using `ink`; still using `oil`."
    with_oil = await image(fake)
    assert len({base, with_ink, stacked, with_oil}) == 4, "each LoRA and the stack change the image"
    await say(fake, "lora use", {"name": "ink"})
    assert await image(fake) == stacked  # switching back: same adapters, same pixels
    assert "at 0.5" in await say(fake, "lora use", {"name": "oil", "scale": 0.5})  # updates, not a third
    assert "Imported `dye`" in await say(fake, "lora import", {"name": "dye"},
                                  attachments={"file": ("d.safetensors", lora_files["kohya"])})
    full = await say(fake, "lora use", {"name": "dye"})
    assert "already stack 2 LoRAs (ink, oil)" in full
    # /imagine lora: overrides the stack for one image, at the default scale.
    assert await image(fake, lora="ink") == with_ink
    choices = await fake.autocomplete("imagine", {"prompt": "x", "lora": "in"}, focused="lora", user=fake.alice)
    assert [choice["value"] for choice in choices] == ["ink"]

    # Shared: bob may list and use it; unshared: gone again, his pick dropped.
    assert "now shared" in await say(fake, "lora share", {"name": "ink"})
    assert "shared by" in await say(fake, "lora list", user=fake.bob) and await names(fake, fake.bob) == ["ink"]
    assert "now use `ink`" in await say(fake, "lora use", {"name": "ink"}, user=fake.bob)
    assert await image(fake, user=fake.bob) == with_ink
    assert "only its owner" in await say(fake, "lora delete", {"name": "ink"}, user=fake.bob)
    assert "1 member(s) stopped using it" in await say(fake, "lora unshare", {"name": "ink"})
    assert await names(fake, fake.bob) == [] and await image(fake, user=fake.bob) == base
    assert fake.spec_violations == []
    assert "LoRA hot-swap: 2 slots of rank 64" in bot.log()  # the worker path above was the slotted one


async def test_rename_info_export_and_delete(fake, bot, data_dir, lora_files):
    await say(fake, "lora import", {"name": "ink"}, attachments={"file": ("ink.safetensors", lora_files["kohya"])})
    await say(fake, "lora use", {"name": "ink"})
    with_ink = await image(fake)
    assert await say(fake, "lora rename", {"name": "ink", "new_name": "ink2"}) == "`ink` is now `ink2`."
    assert "Names are" in await say(fake, "lora rename", {"name": "ink2", "new_name": "Bad Name"})
    listing = await say(fake, "lora list")
    assert "`ink2` imported (kohya), rank 4 (yours, private) — in use at 0.8" in listing
    assert await image(fake) == with_ink  # the pick follows the rename

    info = await say(fake, "lora info", {"name": "ink2"})
    assert "owner <@" in info and "rank 4, alpha 4" in info and "imported from `ink.safetensors` (kohya format)" in info

    text = await say(fake, "lora export", {"name": "ink2"})
    links = [part.split(")")[0] for part in text.split("](")[1:]]
    assert len(links) == 2 and all(link.startswith(f"http://127.0.0.1:{bot.env['HTTP_PORT']}/files/") for link in links)
    async with aiohttp.ClientSession() as session:
        bodies = []
        for link in links:
            async with session.get(link) as response:
                assert response.status == 200
                bodies.append(await response.read())
    from safetensors.torch import load

    ours, comfy = load(bodies[0]), load(bodies[1])
    stored = next((data_dir / "loras").glob("*/pytorch_lora_weights.safetensors"))
    assert bodies[0] == stored.read_bytes() and all(key.startswith("transformer.") for key in ours)
    assert all(key.startswith("diffusion_model.") for key in comfy) and sum(k.endswith(".alpha") for k in comfy) == 28
    for key, value in ours.items():
        assert torch.equal(comfy["diffusion_model." + key.removeprefix("transformer.")], value)
    # The ComfyUI export imports back to the same pixels.
    assert "Imported `back` (comfyui format)" in await say(fake, "lora import", {"name": "back"},
                                                           attachments={"file": ("b.safetensors", bodies[1])})
    assert await image(fake, lora="back") == with_ink

    assert "Deleted `ink2`" in await say(fake, "lora delete", {"name": "ink2"})
    assert "no LoRA `ink2`" in await say(fake, "lora info", {"name": "ink2"})
    exports = data_dir / "loras" / "exports"
    await fake.wait_for(lambda: len(list((data_dir / "loras").glob("*/pytorch_lora_weights.safetensors"))) == 1
                        and not any(exports.iterdir()), timeout=10, what="the files removed (only `back` left)")
    base_again = await image(fake)  # the deleted LoRA's pick is gone too
    assert base_again != with_ink
    # A moderator may delete a member's shared LoRA; the audit log shows it.
    await say(fake, "lora share", {"name": "back"})
    assert "Deleted `back`" in await say(fake, "lora delete", {"name": "back"}, user=fake.mod)
    assert "lora-delete" in await say(fake, "mod audit", user=fake.mod)
    assert fake.spec_violations == []


async def test_buttons_use_only_the_loras_the_clicker_may_use_now(fake, bot, lora_files):
    await say(fake, "lora import", {"name": "ink"}, attachments={"file": ("ink.safetensors", lora_files["kohya"])})
    ix = await fake.slash_command("imagine", {"prompt": "a hill", "seed": 5, "steps": 2, "lora": "ink"}, user=fake.alice)
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id)

    async def click(action: str, user) -> str:
        """What the clicker was told privately: the button's job refuses like /imagine (bot/reporting.py)."""
        ix = await fake.click_button(result, f"zimage:{action}:{job_id}", user=user)
        await ix.wait_response(timeout=3)
        return await wait_refusal(ix, timeout=30)

    for action in ("reroll", "vary"):  # alice's LoRA is private: bob may not use it through her buttons either
        assert "may not use" in await click(action, fake.bob)
    assert not [m for m in fake.messages.values() if not m.deleted and not m.ephemeral and "may not use" in (m.content or "")]
    await say(fake, "lora share", {"name": "ink"})
    shared = await fake.click_button(result, f"zimage:reroll:{job_id}", user=fake.bob)
    [rerolled] = await wait_result(fake, await queued_job(shared))
    assert any(field["name"] == "LoRA" for field in rerolled.embeds[0]["fields"])
    await say(fake, "lora unshare", {"name": "ink"})
    assert "may not use" in await click("vary", fake.bob)
    await say(fake, "lora delete", {"name": "ink"})
    assert "may not use" in await click("reroll", fake.alice)  # gone, for its owner too
    assert fake.spec_violations == []


def test_pickle_payload_never_runs(tmp_path):
    """A pickle that would run code on load is refused by reading bytes only."""
    from bot.lora_import import LoraImportError, SafeTensors

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    path = tmp_path / "evil.safetensors"
    buffer = io.BytesIO()
    pickle.dump(Boom(), buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(LoraImportError, match="pickle"):
        SafeTensors(path, 1 << 20)

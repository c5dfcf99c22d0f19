"""The prompt enhancer: the text encoder itself, run as a language model, rewrites a short prompt in detail.

Z-Image's text encoder is Qwen3-4B without its LM head (transformers' ``Qwen3Model``). Qwen3-4B ties its
head to its input embeddings (``tie_word_embeddings``), so the head is exactly ``embed_tokens.weight``:
:func:`tied_causal_lm` wraps the pipeline's own modules in a ``Qwen3ForCausalLM`` whose ``lm_head.weight``
*is* that parameter (built on the meta device, then given the real modules: no weight is copied and nothing
is downloaded). Decoding is a plain loop with a KV cache, so it can stop between tokens (a cancel) and sample
from a CPU generator seeded by the image's seed: the same prompt and seed give the same rewrite, and another
seed (Reroll, Variations) another rewrite, hence another composition. No seed: greedy.

``max_new_tokens`` is a hard cap (MAX_NEW_TOKENS): a rewrite costs at most that many decoder steps. On the
tiny random model (tests) the rewrite is gibberish bytes, which is all the plumbing tests need.

Runs on the worker's GPU thread, as its own task between other members' images (gpu/scheduler.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zimage_protocol.errors import Cancelled

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 120  # about 90 words: a detailed prompt, a few seconds of decoding on a GPU
TEMPERATURE = 0.7
TOP_P = 0.9

INSTRUCTION = (
    "Rewrite this image prompt in detail for a text-to-image model, in the same language as the prompt. "
    "Keep its subject and intent; add the setting, composition, lighting, colours and style. "
    "Answer with the rewritten prompt only, as one paragraph, under 80 words.\n\nPrompt: {prompt}"
)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


class EnhancementCancelled(Cancelled):
    """The request was cancelled while its prompt was being rewritten."""


@dataclass(frozen=True)
class Enhanced:
    """One rewrite: the new prompt, the tokens decoded for it and the seconds it took (prefill included)."""

    prompt: str
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def tied_causal_lm(encoder: Any) -> Any:
    """A ``Qwen3ForCausalLM`` around ``encoder`` (a ``Qwen3Model``) whose head shares the input embeddings'
    storage. The wrapper's own modules are created on the meta device and replaced: it allocates nothing."""
    import torch
    from transformers import Qwen3ForCausalLM

    if not getattr(encoder.config, "tie_word_embeddings", True):
        # Only a tied model's head is its embedding matrix; an untied one would need weights we do not have.
        raise ValueError("the text encoder does not tie its LM head to its embeddings: no enhancer without a head")
    with torch.device("meta"):
        lm = Qwen3ForCausalLM(encoder.config)
    lm.model = encoder
    lm.lm_head.weight = encoder.embed_tokens.weight
    return lm.eval()


class PromptEnhancer:
    """Rewrites prompts with the pipeline's text encoder and tokenizer. Not thread-safe: the GPU thread's."""

    def __init__(self, encoder: Any, tokenizer: Any, max_new_tokens: int = MAX_NEW_TOKENS):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.lm = tied_causal_lm(encoder)
        self._stop_ids = {tokenizer.convert_tokens_to_ids(token) for token in ("<|im_end|>", "<|endoftext|>")}
        if tokenizer.eos_token_id is not None:
            self._stop_ids.add(tokenizer.eos_token_id)

    def _retie(self) -> None:
        """Moving the encoder (a training offloads it to the CPU and back) may give the embedding a new Parameter."""
        if self.lm.lm_head.weight is not self.encoder.embed_tokens.weight:
            self.lm.lm_head.weight = self.encoder.embed_tokens.weight

    def instruction_ids(self, prompt: str) -> list[int]:
        """The chat-templated instruction (no thinking: Qwen3's template closes an empty think block)."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": INSTRUCTION.format(prompt=prompt)}], tokenize=False,
            add_generation_prompt=True, enable_thinking=False)
        return list(self.tokenizer(text).input_ids)

    def enhance(self, prompt: str, seed: int | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> Enhanced:
        """The detailed prompt for ``prompt`` (the prompt itself when the model writes nothing usable)."""
        import torch
        from transformers import DynamicCache

        self._retie()
        started = time.perf_counter()
        device = self.encoder.embed_tokens.weight.device
        generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
        new_tokens: list[int] = []
        cache = DynamicCache(config=self.encoder.config)
        step_ids = torch.tensor([self.instruction_ids(prompt)], device=device)
        with torch.inference_mode():
            for _ in range(self.max_new_tokens):
                if should_stop():
                    raise EnhancementCancelled()
                logits = self.lm(input_ids=step_ids, cache=cache, use_cache=True, logits_to_keep=1).logits
                token = _next_token(logits[0, -1], generator)
                if token in self._stop_ids:
                    break
                new_tokens.append(token)
                step_ids = torch.tensor([[token]], device=device)
        seconds = time.perf_counter() - started
        text = clean_rewrite(self.tokenizer.decode(new_tokens, skip_special_tokens=True))
        return Enhanced(prompt=text or prompt, tokens=len(new_tokens), seconds=seconds)


def _next_token(logits: Any, generator: Any) -> int:
    """Greedy without a generator; else nucleus sampling on the CPU (the same draw on every device)."""
    import torch

    if generator is None:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / TEMPERATURE, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(0) - ordered < TOP_P  # the smallest head of the distribution holding TOP_P
    ordered = ordered * keep
    pick = torch.multinomial(ordered / ordered.sum(), 1, generator=generator)
    return int(order[pick])


def clean_rewrite(text: str) -> str:
    """The rewrite without a think block, a "Prompt:" label, wrapping quotes or unprintable characters, on one line."""
    text = _THINK.sub("", text)
    # Nothing unprintable travels on (a PNG text chunk, a Discord message): a small model may write any byte.
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    for label in ("Prompt:", "Rewritten prompt:", "prompt:"):
        text = text.removeprefix(label).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text

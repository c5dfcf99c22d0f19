"""The prompt enhancer's speed (``--sections enhancer``): tokens per second of a rewrite on this device.

Runs gpu/enhancer.py's ``PromptEnhancer`` on the engine's text encoder (the inference section's engine when
it ran, else one loaded on the built pipeline) with the worker's cap (MAX_NEW_TOKENS) and seeded sampling.
The weights are random, so the text is noise and a stop token is rare: a rewrite decodes about the whole cap,
which is the worst case the scheduler's time slice has to allow for. Reported: the seconds of each rewrite
(prefill of the instruction included) and tokens per second; the first rewrite is a warm-up, not counted.
"""

from __future__ import annotations

import statistics

from ..enhancer import MAX_NEW_TOKENS, PromptEnhancer
from .common import log

FULL_ENHANCER = {"rewrites": 3, "max_new_tokens": MAX_NEW_TOKENS}
TINY_ENHANCER = {"rewrites": 2, "max_new_tokens": 24}
PROMPTS = ("a red fox in snow", "一只在雪地里的红狐狸", "a lighthouse on a cliff at dusk, oil painting")


def run_section(engine, cfg: dict) -> dict:
    enhancer = PromptEnhancer(engine.pipe.text_encoder, engine.tokenizer, max_new_tokens=cfg["max_new_tokens"])
    warm = enhancer.enhance(PROMPTS[0], seed=0)
    log(f"enhancer warm-up: {warm.tokens} tokens in {warm.seconds:.2f} s")
    runs = []
    for index in range(cfg["rewrites"]):
        done = enhancer.enhance(PROMPTS[index % len(PROMPTS)], seed=index + 1)
        runs.append({"tokens": done.tokens, "seconds": round(done.seconds, 3),
                     "tokens_per_s": round(done.tokens_per_second, 1)})
        log(f"  rewrite {index + 1}: {done.tokens} tokens in {done.seconds:.2f} s ({done.tokens_per_second:.1f} tokens/s)")
    return {"config": dict(cfg), "device": str(engine.pipe.text_encoder.device), "runs": runs,
            "warm_up_s": round(warm.seconds, 3),
            "median_tokens_per_s": statistics.median(run["tokens_per_s"] for run in runs),
            "median_s_per_rewrite": statistics.median(run["seconds"] for run in runs)}


def render_enhancer(section: dict) -> str:
    if "error" in section:
        return f"### Prompt enhancer\n\nerror: {section['error']}"
    cap = section["config"]["max_new_tokens"]
    lines = [f"### Prompt enhancer (the text encoder as a language model, on {section['device']}, cap {cap} tokens)", "",
             "| rewrite | tokens | s | tokens/s |", "|---|---|---|---|"]
    lines += [f"| {n} | {run['tokens']} | {run['seconds']} | {run['tokens_per_s']} |"
              for n, run in enumerate(section["runs"], start=1)]
    lines += ["", f"Median: **{section['median_tokens_per_s']} tokens/s**, {section['median_s_per_rewrite']} s per "
                  f"rewrite (one per image with enhance; warm-up {section['warm_up_s']} s)."]
    return "\n".join(lines)

"""Scratch: prompt encoding on the CPU (text encoder offloaded while a LoRA trains): bf16 vs fp32."""
import statistics, subprocess, time
import torch
from gpu.bench.build import build_full_pipeline
from gpu.bench.latency import fresh_prompts

flags = subprocess.run("lscpu", capture_output=True, text=True).stdout
print("cpu:", [l for l in flags.splitlines() if "Model name" in l or "Thread(s) per core" in l or "Core(s)" in l])
print("bf16 flags:", sorted({f for f in flags.split() if "bf16" in f or "amx" in f}), "threads", torch.get_num_threads())
pipe = build_full_pipeline()
te = pipe.text_encoder.to("cpu")
tok = pipe.tokenizer
def enc(prompt):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=True)
    ids = tok(text, return_tensors="pt")
    with torch.inference_mode():
        return te(input_ids=ids.input_ids, attention_mask=ids.attention_mask.bool(), output_hidden_states=True).hidden_states[-2], ids.input_ids.shape[1]
prompts = fresh_prompts(6, "enc")
for dtype in (torch.bfloat16, torch.float32):
    t = time.perf_counter(); te.to(dtype); conv = time.perf_counter() - t
    enc("warm up")
    times = []
    for p in prompts:
        t = time.perf_counter(); _, n = enc(p); times.append(time.perf_counter() - t)
    print(f"{dtype}: convert {conv:.1f} s; encode median {statistics.median(times):.3f} s ({n} tokens) runs {[round(x,3) for x in times]}", flush=True)

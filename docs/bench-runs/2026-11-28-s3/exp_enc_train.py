"""Scratch: is CPU prompt encoding slower after/between training steps, with and without CUDA graphs?"""
import json, os, statistics, sys, time, tempfile
from pathlib import Path
import torch
from gpu.bench.build import build_full_pipeline
from gpu.bench import training as tr
from gpu.bench.latency import fresh_prompts
from gpu.train_graphs import TrainingGraphs
from gpu.trainer import LoraTrainer
from gpu import accel

T0 = time.time()
def log(m): print(f"[{time.time()-T0:6.1f}] {m}", flush=True)
work = Path(tempfile.mkdtemp())
ds = tr.write_dataset(work / "ds", 8, 512)
m = json.loads((ds / "manifest.json").read_text())
for e in m: e["caption"] = "sks dog on a wooden table"
(ds / "manifest.json").write_text(json.dumps(m))
pipe = build_full_pipeline()
accel.configure_compile_cache(work / "cc"); accel.raise_recompile_limit()
pipe.transformer.compile_repeated_blocks(fullgraph=True)
tok = pipe.tokenizer
prompts = iter(fresh_prompts(200, "x"))
def enc():
    te = pipe.text_encoder
    text = tok.apply_chat_template([{"role": "user", "content": next(prompts)}], tokenize=False, add_generation_prompt=True, enable_thinking=True)
    ids = tok(text, return_tensors="pt").to(te.device)
    t = time.perf_counter()
    with torch.inference_mode():
        te(input_ids=ids.input_ids, attention_mask=ids.attention_mask.bool(), output_hidden_states=True)
    return round(time.perf_counter() - t, 3)
log(f"threads {torch.get_num_threads()}")
for graphs_on in (sys.argv[1] == "on",):
    g = TrainingGraphs.for_transformer(pipe.transformer) if graphs_on else None
    trainer = LoraTrainer(pipe, ds, work / f"o{graphs_on}", tr.train_config(tr.FULL_TRAIN), graphs=g)
    trainer.prepare()
    log(f"graphs={graphs_on} prepared; TE on {pipe.text_encoder.device}; encode before steps: {[enc() for _ in range(3)]}")
    for _ in range(20): trainer.step()
    torch.cuda.synchronize()
    log(f"20 steps done (last {trainer._step_seconds[-3:]}); encode after steps: {[enc() for _ in range(3)]}")
    inter = []
    for _ in range(4):
        trainer.step(); trainer.suspend(); inter.append(enc()); trainer.resume()
    log(f"encode between steps: {inter}")
    time.sleep(3)
    log(f"encode after 3 s idle: {[enc() for _ in range(2)]}")
    trainer.close()

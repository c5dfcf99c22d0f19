"""Scratch: CPU prompt encoding while a LoRA trains: main thread vs the GPU executor thread vs with a driver thread."""
import os, statistics, threading, time, tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
os.environ["ZIMAGE_COMPILE"] = "off"
import torch
from gpu.bench.build import build_full_pipeline
from gpu.bench import training as tr
from gpu.bench.latency import fresh_prompts
from gpu.engine import ImageEngine
from gpu.protocol import GenerateParams
from gpu.trainer import LoraTrainer
T0 = time.time()
def log(m): print(f"[{time.time()-T0:6.1f}] {m}", flush=True)
work = Path(tempfile.mkdtemp())
ds = tr.write_dataset(work / "ds", 4, 512)
pipe = build_full_pipeline()
gpu = ThreadPoolExecutor(1)
on = lambda f, *a: gpu.submit(f, *a).result()
engine = ImageEngine("x", work / "d")
on(engine.load, pipe)
on(lambda: engine.generate(GenerateParams(prompt="hello", width=1024, height=1024, steps=2, seeds=[0])))
log("engine ready")
prompts = iter(fresh_prompts(300, "p"))
def enc():
    t = time.perf_counter(); engine._prompt_embeds(next(prompts)); torch.cuda.synchronize(); return round(time.perf_counter() - t, 3)
log(f"TE on GPU, gpu thread: {[on(enc) for _ in range(3)]}")
trainer = LoraTrainer(pipe, ds, work / "o", tr.train_config(tr.FULL_TRAIN))
on(trainer.prepare)
for _ in range(3): on(trainer.step)
log(f"TE on {pipe.text_encoder.device}; gpu thread: {[on(enc) for _ in range(4)]}")
log(f"main thread: {[enc() for _ in range(4)]}")
def susp_enc():
    trainer.suspend(); r = enc(); trainer.resume(); return r
stop = threading.Event()
def drive():
    while not stop.is_set(): on(trainer.step)
d = threading.Thread(target=drive); d.start()
res = []
for _ in range(4):
    time.sleep(0.5); res.append(on(susp_enc))
stop.set(); d.join()
log(f"gpu thread with a driver thread training: {res}")
log(f"torch threads {torch.get_num_threads()}, on gpu thread {on(torch.get_num_threads)}")
t = time.perf_counter(); on(trainer.step); log(f"one eager step {time.perf_counter()-t:.3f}")

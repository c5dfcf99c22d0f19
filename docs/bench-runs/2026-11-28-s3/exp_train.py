"""Scratch experiment (not shipped): where does a compiled LoRA training step spend its time, and
which compile mode makes it faster? Then a profile of one fp8 1024x1024 image."""
import json, os, sys, time, shutil, statistics, tempfile
from pathlib import Path
import torch

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
from gpu.bench.build import build_full_pipeline
from gpu.bench import training as tr
from gpu.bench.common import timed, free_memory, reset_peak, peak_gib
from gpu.trainer import LoraTrainer
from gpu import accel

T0 = time.time()
results = {}
def save():
    (OUT / "exp.json").write_text(json.dumps(results, indent=1, default=str))
def log(msg):
    print(f"[{time.time()-T0:7.1f}] {msg}", flush=True)

def kernel_stats(prof, steps):
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end) for e in ev)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    cats = {}
    from gpu.bench.inference import KERNEL_CATEGORIES
    for e in ev:
        n = e.name.lower()
        lab = next((c for c, keys in KERNEL_CATEGORIES if any(k in n for k in keys)), "other")
        cats[lab] = cats.get(lab, 0.0) + (e.time_range.end - e.time_range.start) / 1000
    top = {}
    for e in ev:
        top.setdefault(e.name[:120], [0.0, 0])
        top[e.name[:120]][0] += (e.time_range.end - e.time_range.start) / 1000
        top[e.name[:120]][1] += 1
    top = sorted(top.items(), key=lambda kv: -kv[1][0])[:25]
    cpu = sorted(((e.key, e.self_cpu_time_total / 1000, e.count) for e in prof.key_averages()), key=lambda x: -x[1])[:25]
    return {"kernels_per_step": len(ev) / steps, "gpu_busy_ms_per_step": busy / 1000 / steps,
            "by_category_ms_per_step": {k: round(v / steps, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms_per_step": [(n, round(ms / steps, 2), c // steps) for n, (ms, c) in top],
            "top_cpu_self_ms_per_step": [(n[:100], round(ms / steps, 2), c // steps) for n, ms, c in cpu]}

def profile_steps(trainer, steps=3):
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / steps
    out = kernel_stats(prof, steps)
    out["wall_ms_per_step_profiled"] = wall * 1000
    return out

def run_mode(pipe, work, name, compile_kwargs, profile=False, cfg_over=None):
    log(f"mode {name}: {compile_kwargs}")
    torch._dynamo.reset()
    tx = pipe.transformer
    if compile_kwargs is None:
        for m in tx.modules():
            m._compiled_call_impl = None
    else:
        tx.compile_repeated_blocks(fullgraph=True, **compile_kwargs)
    tcfg = dict(tr.FULL_TRAIN)
    out_dir = work / name
    out_dir.mkdir(parents=True, exist_ok=True)
    if (work / "cache.pt").is_file():
        shutil.copy(work / "cache.pt", out_dir / "cache.pt")
    cfg = tr.train_config(tcfg)
    if cfg_over:
        import dataclasses
        cfg = dataclasses.replace(cfg, **cfg_over)
    trainer = LoraTrainer(pipe, work / "dataset", out_dir, cfg)
    res = {}
    try:
        res["prepare_s"] = timed(trainer.prepare)
        if not (work / "cache.pt").is_file():
            shutil.copy(out_dir / "cache.pt", work / "cache.pt")
        g0 = accel.compiled_graph_count()
        warm = [timed(trainer.step) for _ in range(len(trainer.samples) * 2)]
        res["warm_s"] = [round(w, 3) for w in warm]
        res["graphs_warm"] = accel.compiled_graph_count() - g0
        reset_peak()
        g0 = accel.compiled_graph_count()
        times = [timed(trainer.step) for _ in range(16)]
        res["median_s"] = statistics.median(times)
        res["min_s"], res["max_s"] = min(times), max(times)
        res["runs"] = [round(t, 4) for t in times]
        res["graphs_timed"] = accel.compiled_graph_count() - g0
        res["peak_gib"] = peak_gib()
        # without the per-step synchronize of timed(): 16 steps back to back
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(16):
            trainer.step()
        torch.cuda.synchronize()
        res["back_to_back_s_per_step"] = (time.perf_counter() - t) / 16
        res["losses_tail"] = trainer.losses[-4:]
        if profile:
            res["profile"] = profile_steps(trainer)
    except Exception as exc:
        import traceback; traceback.print_exc()
        res["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        trainer.close()
        free_memory()
    log(f"  {name}: {json.dumps({k: v for k, v in res.items() if k not in ('profile', 'runs', 'warm_s')})}")
    if "profile" in res:
        p = res["profile"]
        log(f"  profile: wall {p['wall_ms_per_step_profiled']:.1f} ms, gpu busy {p['gpu_busy_ms_per_step']:.1f} ms, "
            f"{p['kernels_per_step']:.0f} kernels; {p['by_category_ms_per_step']}")
        for row in p["top_kernels_ms_per_step"][:12]:
            log(f"    K {row}")
        for row in p["top_cpu_self_ms_per_step"][:15]:
            log(f"    C {row}")
    return res

def main():
    modes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["default"]
    torch.backends.cuda.matmul.allow_tf32 = True
    work = Path(tempfile.mkdtemp(prefix="exp-"))
    tr.write_dataset(work / "dataset", 8, 512)
    pipe = build_full_pipeline()
    log("built")
    accel.configure_compile_cache(work / "cc")
    accel.raise_recompile_limit()
    table = {
        "default": ({}, True, None),
        "ro": ({"mode": "reduce-overhead"}, True, None),
        "cpp": ({"options": {"cpp_wrapper": True}}, False, None),
        "ro_noclip": ({"mode": "reduce-overhead"}, False, {"max_grad_norm": 0.0}),
        "default_noclip": ({}, False, {"max_grad_norm": 0.0}),
        "eager": (None, True, None),
    }
    for m in modes:
        kw, prof, over = table[m]
        results[m] = run_mode(pipe, work, m, kw, profile=prof, cfg_over=over)
        save()
    if os.environ.get("EXP_FP8"):
        fp8_profile(pipe, work)
    save()

def fp8_profile(pipe, work):
    from gpu.engine import ImageEngine
    from gpu.protocol import GenerateParams
    from gpu.bench.inference import profile_one
    torch._dynamo.reset()
    for m in pipe.transformer.modules():
        m._compiled_call_impl = None
    os.environ["ZIMAGE_QUANT"] = "fp8"
    os.environ["LORA_HOTSWAP"] = os.environ.get("EXP_FP8_HOTSWAP", "off")
    engine = ImageEngine("exp", work / "data")
    engine.load(pipe=pipe)
    def run_one(w, h, prompt, seed):
        return engine.generate(GenerateParams(prompt=prompt, width=w, height=h, steps=8, seeds=[seed]))
    t = time.perf_counter()
    accel.warm_up_buckets(lambda w, h, steps, prompt: engine.generate(
        GenerateParams(prompt=prompt, width=w, height=h, steps=steps, seeds=[0])), sizes=((1152, 864), (1024, 1024)), steps=1)
    log(f"fp8 warm-up {time.perf_counter()-t:.1f} s")
    times = [timed(lambda: run_one(1024, 1024, "a cat", 1)) for _ in range(5)]
    results["fp8"] = {"median_s": statistics.median(times), "runs": times}
    results["fp8"]["profile"] = profile_one(run_one, {"timing_sizes": [(1024, 1024)]})
    log(f"fp8: {results['fp8']['median_s']:.3f} s; {results['fp8']['profile']['by_category_ms']}")
    for row in results["fp8"]["profile"]["top_kernels"]:
        log(f"    K {row}")

if __name__ == "__main__":
    main()

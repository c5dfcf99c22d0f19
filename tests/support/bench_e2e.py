r"""End-to-end benchmark (issue #12, "Keep the GPU busy"): the real bot, the tests' fake Discord, the real worker.

Run from the repository root (the script puts the root on sys.path itself, so no PYTHONPATH is needed)::

    python tests/support/bench_e2e.py                                    # tiny model, 20 members x 5 /imagine
    python tests/support/bench_e2e.py --members 4 --per-member 3 --steps 2 --json e2e.json   # a quick CPU run
    python tests/support/bench_e2e.py --model /models/zimage --json e2e.json                 # a saved pipeline (GPU)
    python tests/support/bench_e2e.py --model /tmp/zimage-random --build-model               # full-size random weights
    python tests/support/bench_e2e.py --workers 1,2 ...   # a pass with 1 worker, then one with 2 on the same GPU

In one run, on one machine, it measures:

1. **Worker alone** (the baseline): worker 1, ``python -m gpu --model M --data-dir D --socket S``
   started here, then the same jobs the burst will have accepted (members x min(per-member, cap), same
   prompts, seeds, size and steps) sent straight to it through ``bot.worker.client.WorkerClient``,
   one after another.
2. **Through the bot**, once per count in ``--workers`` (default ``1``; issue #13: does a second worker
   overlapping the first on the same GPU help?): N workers running (worker 1 kept from the baseline, the
   others started here the same way, one at a time, each on its own socket, all on the same GPU: the first
   one CUDA shows them), then ``python -m bot`` (``tests/support/bot_process.py``, WORKER_MODE=external,
   WORKERS = the N sockets, RATE_LIMIT_COUNT high so only the per-member cap refuses, PROGRESS_INTERVAL
   left at its default, ZIMAGE_MODEL = the same model) against a fresh ``tests/support/fake_discord`` with
   Discord-like rate-limit buckets on; a burst of members x per-member ``/imagine`` interactions sent
   concurrently. Each pass has a fresh bot DATA_DIR (so a fresh database and queue) and fake, and the same
   burst; workers beyond N are stopped before it, so only N are on the GPU.

Every pass uses workers this bench started (external mode), N=1 included, rather than the bot's spawn
mode for N=1: then the only thing that differs between passes is N. The per-image path is the same as in
spawn mode (the bot's WorkerClient over a unix socket to ``python -m gpu``; spawn mode only adds who
starts and restarts the process), so the 1-worker figures stay comparable with earlier spawn-mode runs,
except ``start_to_first_png_s``, which no longer includes loading a worker. Two workers on one GPU cannot
come from spawn mode anyway (WORKER_GPUS lists each GPU once). The workers share one data dir (``D``:
the tiny model, the compile cache, so a later worker loads warm). Each worker is warmed up at the burst's
size by a direct request before any measurement (``--warmup`` images): its first image at a size pays for
tracing, which must not land in a burst. The bot's own warm-up /imagine shows it reaches a worker; it
connects to all of them at start, seconds before the burst.

Before the burst of each side, one warm-up image (``--warmup``) and ``--single`` lone images: a single
/imagine, interaction -> PNG at the fake, against the worker's own time for the same request (sent -> PNG
back; also the worker's ``Done.seconds``). Issue #12's target: the bot adds at most 0.15 s.

Definitions (all timestamps ``time.time()``; the fake stamps what it receives):

* interaction sent: the fake has written INTERACTION_CREATE to the bot's websocket;
* first callback: the fake received ``POST /interactions/{id}/{token}/callback`` (RequestRecord.at);
* PNG delivered: the first version of a message (created or edited, any route) carrying a PNG; each
  PNG is matched to its interaction by the prompt in its text chunk (prompts are unique);
* through-the-bot images/min: delivered PNGs of the burst / (last PNG delivered - first interaction
  sent); worker-alone images/min: images / (first request sent - last image back);
* worker-alone "latency if all sent at once": each image's completion time from the first request,
  i.e. the best a strictly serial worker can do for a burst (the through-the-bot latencies' floor);
* worker busy (sum of embed times / elapsed): the workers' own seconds per image over the burst, so up
  to N with N workers (two workers sharing a GPU each take longer per image: that is the point to see);
* health samples (about once a second during the baseline's jobs and each burst, ``WorkerSampler``):
  the share of samples each worker said it was busy, and peak GPU memory: each worker's
  ``HealthReport.gpu_memory_used`` (its tensors) and ``nvidia-smi``'s used memory (everything);
* 429s, emptied buckets and stalls: ``fake.ratelimit_stats()`` counted over the burst only.

The size comes from the bot's aspect choice (``--aspect``, default 1:1 = 1024x1024): the bot only
offers ~1 megapixel sizes (bot/sizes.py) and no setting lowers them, so there is no --size here; on the
CPU the tiny model pays mostly for the VAE at that size (~2-4 s per image on 2 cores).
Output: markdown tables on stdout (one column per pass), progress on stderr, every number in ``--json``:
``passes`` (one entry per count: ``workers``, ``bot``, ``comparison``), ``by_workers`` (each count's
headline figures, and its images/min against the 1-worker pass), ``workers_started``; ``bot`` and
``comparison`` at the top are the first pass's, where the bench put them before --workers.

On one H200 with full-size random weights, the device command for issue #13 (one 10-minute call)::

    python tests/support/bench_e2e.py --model /tmp/zimage-random --build-model --members 10 --per-member 3 \
        --workers 1,2 --json $OUT/e2e-workers.json 2>&1 | tee $OUT/e2e-workers.log

Estimate from the 2026-12-04 run (docs/bench-runs/2026-12-04-s5/e2e-serving.log: 1.34 s per image, worker
ready in 47 s with a cold compile cache, ~35 s more for its first 1024x1024 image, a warm-cache worker
~30 s, the bot ~11 s to connect): building the weights ~55 s (none when the folder exists), worker 1 ~80 s,
the baseline (3 lone + 30 jobs) ~45 s, the 1-worker pass ~65 s (bot start, lone images, a 30-job burst
~41 s, stop), worker 2 ~40 s, the 2-worker pass ~70 s: about 6 minutes, 7 at most with slow starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The bench's modules before the bot's packages: each imports bench_e2e_common first, which puts the repository root
# on sys.path (run as a script, only its own folder, tests/support, is there), so the bot's and the worker's packages
# import without an installed copy (the GPU machine).
from bench_e2e_bot import (
    FAILED,
    JOB_ID,
    Tracker,
    bot_pass,
    burst_report,
    embed_time,
    lone_images,
    refusal_reason,
    through_the_bot,
)
from bench_e2e_common import (
    PASS_NAMES,
    PASS_PREFIXES,
    ROOT,
    TARGET_OVERHEAD_S,
    baseline_jobs,
    burst_jobs,
    log,
    lone_prompts,
    pass_through_env,
    per_min,
    percentile,
    summary,
)
from bench_e2e_report import busy_cell, compare, fmt, memory_cell, overlap, render, workers_label
from bench_e2e_workers import (
    Worker,
    WorkerSampler,
    generate_one,
    job_size,
    nvidia_smi_used_mib,
    scale_workers,
    stop_process,
    wait_worker_ready,
    worker_alone,
)

from bot.settings import Settings

MAX_WORKERS = 8  # --workers: each one loads the whole model on the same GPU

# Every name the bench defined before its split into bench_e2e_*.py, importable from here as before.
__all__ = [
    "FAILED", "JOB_ID", "MAX_WORKERS", "PASS_NAMES", "PASS_PREFIXES", "ROOT", "TARGET_OVERHEAD_S", "Tracker", "Worker",
    "WorkerSampler", "baseline_jobs", "bot_pass", "build_model", "burst_jobs", "burst_report", "busy_cell", "compare",
    "embed_time", "fmt", "generate_one", "job_size", "log", "lone_images", "lone_prompts", "main", "memory_cell",
    "nvidia_smi_used_mib", "overlap", "parse_args", "pass_through_env", "per_min", "percentile", "refusal_reason",
    "render", "run", "scale_workers", "stop_process", "summary", "through_the_bot", "wait_worker_ready",
    "worker_alone", "worker_counts", "workers_label",
]


def build_model(target: Path) -> dict:
    """Full-size random weights, saved as a diffusers folder by gpu/bench's own 'save' phase (CUDA)."""
    if (target / "model_index.json").is_file():
        return {"reused": str(target)}
    with tempfile.TemporaryDirectory(prefix="zimage-e2e-build-") as scratch:
        out = Path(scratch) / "save.json"
        command = [sys.executable, "-m", "gpu.bench", "--phase", "save", "--data-dir", scratch,
                   "--model-dir", str(target), "--child-json", str(out)]
        log(f"building full-size random weights into {target}: {' '.join(command[1:])}")
        subprocess.run(command, cwd=ROOT, env={**os.environ, **pass_through_env()}, check=True)
        return json.loads(out.read_text())


async def run(args) -> dict:
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="zimage-e2e-"))
    data_dir = work_dir / "data"  # the workers' (models, compile cache); each pass's bot has its own
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    results: dict = {"config": {
        "command": "python tests/support/bench_e2e.py " + " ".join(sys.argv[1:]), "model": args.model,
        "aspect": args.aspect, "width": args.width, "height": args.height, "steps": args.steps,
        "members": args.members, "per_member": args.per_member, "interactions": args.members * args.per_member,
        "max_queued_per_user": args.cap, "rate_limit_count": args.rate_limit_count,
        "progress_interval": os.environ.get("PROGRESS_INTERVAL") or "default",
        "warmup": max(1, args.warmup), "single": args.single, "work_dir": str(work_dir), "cpu_count": os.cpu_count(),
        "target_overhead_s": TARGET_OVERHEAD_S, "workers": args.workers, "worker_mode": "external",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }}
    if args.build_model:
        results["build"] = build_model(Path(args.model))
    worker_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", **pass_through_env(),
                  "LOG_LEVEL": args.log_level}
    workers: list[Worker] = []
    results["workers_started"] = []
    results["passes"] = []
    try:
        started = await scale_workers(args, worker_env, workers, 1, work_dir, data_dir)
        results["workers_started"] += [{**entry, "for": "worker alone"} for entry in started]
        results["worker_alone"] = await worker_alone(args, workers[0], started[0])
        results["config"]["device"] = results["worker_alone"].get("device")
        single_s = statistics.median(results["worker_alone"]["single"]["to_png_s"] or [5.0])
        for count in args.workers:
            started = await scale_workers(args, worker_env, workers, count, work_dir, data_dir)
            results["workers_started"] += [{**entry, "for": f"{count} workers"} for entry in started]
            entry = {"workers": count, "bot": await bot_pass(args, workers, work_dir, single_s)}
            entry["comparison"] = compare(results["worker_alone"], entry["bot"])
            results["passes"].append(entry)
    finally:
        for worker in reversed(workers):
            await worker.stop()
        if "worker_alone" in results:
            results["worker_alone"]["exit_code"] = workers[0].exit_code if workers else None
    # One pass's figures also where the bench put them before --workers (readers of older JSON)
    results["bot"], results["comparison"] = results["passes"][0]["bot"], results["passes"][0]["comparison"]
    results["by_workers"] = overlap(results["passes"])
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tests/support/bench_e2e.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (default; built in DATA_DIR/models) or a pipeline folder")
    parser.add_argument("--build-model", action="store_true",
                        help="first save full-size random weights to --model's folder (gpu.bench's save phase, CUDA) "
                             "unless it already holds a pipeline")
    parser.add_argument("--workers", type=worker_counts, default=[1], metavar="N[,M...]",
                        help="one pass through the bot per count, each with that many workers on the same GPU "
                             "(default 1; e.g. 1,2: does a second worker overlapping the first help?)")
    parser.add_argument("--aspect", default="1:1",
                        help="the /imagine aspect choice (1:1 = 1024x1024; the bot offers no smaller size)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--per-member", type=int, default=5)
    parser.add_argument("--max-queued", type=int, default=None,
                        help=f"MAX_QUEUED_PER_USER for the bot (default: the bot's own, {Settings.max_queued_per_user})")
    parser.add_argument("--rate-limit-count", type=int, default=10_000, help="RATE_LIMIT_COUNT (high: only the cap bites)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unmeasured images first, on each side (at least 1: on the bot's side it shows the worker is ready)")
    parser.add_argument("--single", type=int, default=3, help="lone /imagine measured one at a time, on each side")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds for a worker to load (and compile)")
    parser.add_argument("--burst-timeout", type=float, default=None, help="seconds for the burst (default from the baseline)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to watch for duplicates after the last PNG")
    parser.add_argument("--work-dir", type=Path, default=None, help="DATA_DIR's parent, logs (default: a new temp folder)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--keep-log", action="store_true", help="put the tail of the bot's log in the JSON")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    from bot.sizes import ASPECT_SIZES  # the bot's sizes, read only (what /imagine aspect:X produces)

    if args.aspect not in ASPECT_SIZES:
        parser.error(f"--aspect must be one of {', '.join(ASPECT_SIZES)}")
    args.width, args.height = ASPECT_SIZES[args.aspect]
    args.cap = args.max_queued or Settings.max_queued_per_user
    if args.model != "tiny":
        args.model = str(Path(args.model).expanduser().resolve())
    return args


def worker_counts(raw: str) -> list[int]:
    """--workers: distinct counts of 1 to MAX_WORKERS, in the order the passes run."""
    try:
        counts = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give worker counts such as 1 or 1,2; got {raw!r}") from None
    if not counts or any(not 1 <= count <= MAX_WORKERS for count in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"give distinct worker counts from 1 to {MAX_WORKERS}, such as 1,2; got {raw!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(render(results), flush=True)
    bursts = [entry["bot"].get("burst", {}) for entry in results["passes"]]
    return 0 if all(b.get("complete") and not b.get("unresolved") and not b.get("lost") for b in bursts) else 1


if __name__ == "__main__":
    sys.exit(main())

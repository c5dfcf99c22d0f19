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
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from paths import ROOT

# Run as a script: its own folder (tests/support, the helpers) is already first on sys.path; the repository
# root is added so the bot's and the worker's packages import without an installed copy (the GPU machine).
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.settings import Settings  # noqa: E402
from bot.worker.client import WorkerClient  # noqa: E402
from bot_process import BotProcess  # noqa: E402
from e2e_helpers import png_text, pngs, refusal_text  # noqa: E402
from fake_discord import FakeDiscord  # noqa: E402
from zimage_protocol.messages import Done, GenerateParams, ImageReady  # noqa: E402

TARGET_OVERHEAD_S = 0.15  # issue #12: a lone /imagine within 0.15 s of the worker's own time
MAX_WORKERS = 8  # --workers: each one loads the whole model on the same GPU
JOB_ID = re.compile(r"[Jj]ob #(\d+)")
FAILED = re.compile(r"[Jj]ob #(\d+) (?:failed|was cancelled)")
# Environment the bot (and so its worker) and the baseline worker inherit from this process.
PASS_PREFIXES = ("ZIMAGE_", "LORA_", "CUDA_", "PYTORCH_", "TORCH", "TRITON_", "NVIDIA_", "OMP_", "MKL_", "HF_")
PASS_NAMES = ("LD_LIBRARY_PATH", "HOME", "TMPDIR", "PYTHONUNBUFFERED")


def log(message: str) -> None:
    print(f"[bench-e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = math.floor(k), math.ceil(k)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (k - low), 4)


def summary(values: list[float], *quantiles: float) -> dict:
    out: dict = {"n": len(values)}
    if values:
        out.update({f"p{round(q * 100)}": percentile(values, q) for q in quantiles})
        out.update({"median": round(statistics.median(values), 4), "min": round(min(values), 4),
                    "max": round(max(values), 4)})
    return out


def per_min(images: int, seconds: float | None) -> float | None:
    return round(images * 60.0 / seconds, 2) if images and seconds and seconds > 0 else None


# -- the jobs --------------------------------------------------------------------------------------------


def burst_jobs(members: int, per_member: int) -> list[tuple[int, int, str, int]]:
    """(member, index, prompt, seed), round-robin over members (every member's first, then seconds, ...)."""
    return [(m, j, f"bench burst member {m} image {j}", 1000 + m * per_member + j)
            for j in range(per_member) for m in range(members)]


def baseline_jobs(members: int, per_member: int, cap: int) -> list[tuple[int, int, str, int]]:
    """The jobs the burst should have accepted: each member's first min(per_member, cap)."""
    return [job for job in burst_jobs(members, per_member) if job[1] < min(per_member, cap)]


def lone_prompts(kind: str, count: int) -> list[tuple[str, int]]:
    return [(f"bench {kind} image {k}", 7 + k) for k in range(count)]


# -- the workers ------------------------------------------------------------------------------------------


class Worker:
    """One ``python -m gpu`` this bench starts (all on the same GPU: the first one CUDA shows them), with the
    bench's own client: the baseline's jobs, each worker's warm-up, and health samples for GPU memory. The
    bot connects to the same socket beside it (a worker serves several clients)."""

    def __init__(self, index: int, work_dir: Path, data_dir: Path):
        self.index = index
        self.data_dir = data_dir
        self.socket = work_dir / f"worker-{index}.sock"
        self.log_path = work_dir / f"worker-{index}.log"
        self.client = WorkerClient(self.socket)
        self.process: asyncio.subprocess.Process | None = None
        self.exit_code: int | None = None

    async def start(self, args, env: dict) -> dict:
        """Start it, wait until it is ready, and warm it up at the burst's size (``--warmup`` images straight to
        it): a worker's first image at a size pays for tracing it, which must not land in a measured burst."""
        log(f"worker {self.index}: python -m gpu --model {args.model} --socket {self.socket} (log {self.log_path})")
        started = time.time()
        command = [sys.executable, "-m", "gpu", "--model", args.model, "--data-dir", str(self.data_dir),
                   "--socket", str(self.socket)]
        with open(self.log_path, "ab") as out:
            self.process = await asyncio.create_subprocess_exec(*command, cwd=str(self.data_dir.parent), env=env,
                                                                stdout=out, stderr=out)
        self.client.start()
        ready_s = await wait_worker_ready(self.client, self.process, args.ready_timeout, f"worker {self.index}")
        start_to_ready_s = round(time.time() - started, 2)
        log(f"  worker {self.index} ready after {start_to_ready_s} s on {self.client.device}; warming it up")
        warm_started = time.time()
        for prompt, seed in lone_prompts(f"warm-up w{self.index}", max(1, args.warmup)):
            await generate_one(self.client, GenerateParams(prompt=prompt, seeds=[seed], **job_size(args)))
        return {"worker": self.index, "ready_s": round(ready_s, 2), "start_to_ready_s": start_to_ready_s,
                "warmup_s": round(time.time() - warm_started, 2)}

    async def stop(self) -> int | None:
        await self.client.close()
        if self.process is not None and self.exit_code is None:
            self.exit_code = await stop_process(self.process)
        return self.exit_code


async def scale_workers(args, env: dict, workers: list[Worker], count: int, work_dir: Path, data_dir: Path) -> list[dict]:
    """Exactly `count` workers running before a pass: those beyond it stopped (nothing else on the GPU), the
    missing ones started one after another (each load and warm-up alone, as the first worker's was)."""
    while len(workers) > count:
        worker = workers.pop()
        log(f"worker {worker.index} stopped (exit code {await worker.stop()})")
    started = []
    while len(workers) < count:
        worker = Worker(len(workers) + 1, work_dir, data_dir)
        workers.append(worker)
        started.append(await worker.start(args, env))
    return started


def job_size(args) -> dict:
    return {"width": args.width, "height": args.height, "steps": args.steps}


async def stop_process(process) -> int | None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode


async def wait_worker_ready(client: WorkerClient, process, timeout: float, name: str) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < timeout:
        if process.returncode is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        if client.connected:
            try:
                if (await client.health(timeout=10)).ready:
                    return loop.time() - started
            except Exception:  # noqa: BLE001 - not answering yet while it loads
                pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{name} was not ready after {timeout:.0f} s")


class WorkerSampler:
    """What the workers do while a phase runs, sampled about once a second (cheap: a health request per worker
    and one ``nvidia-smi`` call):

    * busy share: the share of samples in which each worker said it was busy (both workers of a pass
      working shows here; the bot gives no count of images per worker);
    * each worker's peak GPU memory as it reports it, ``HealthReport.gpu_memory_used``
      (``torch.cuda.memory_allocated``: its tensors, not the allocator's cache nor the CUDA context), and
      the sum of those peaks;
    * where ``nvidia-smi`` runs, the peak memory used on the GPUs it lists, summed (everything every process
      holds: on a one-GPU machine, what the workers take of that GPU, contexts and caches included).

    The memory figures are None off CUDA (the workers report no GPU) and without ``nvidia-smi``."""

    INTERVAL = 1.0

    def __init__(self, workers: list[Worker]):
        self.workers = list(workers)
        self.answered: Counter[int] = Counter()
        self.busy: Counter[int] = Counter()
        self.allocated: dict[int, int] = {}
        self.total: int | None = None
        self.smi_used_mib: int | None = None
        self._smi = shutil.which("nvidia-smi")
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> WorkerSampler:
        self._task = asyncio.create_task(self._run(), name="worker-sampler")
        return self

    async def __aexit__(self, *exc_info) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if not self.answered:
            await self.sample()  # a phase shorter than one interval still gets its figures

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.INTERVAL)

    async def sample(self) -> None:
        reports = await asyncio.gather(*(worker.client.health(timeout=2) for worker in self.workers),
                                       return_exceptions=True)
        for worker, report in zip(self.workers, reports, strict=True):
            if isinstance(report, BaseException):
                continue  # a worker that does not answer in time misses one sample
            self.answered[worker.index] += 1
            self.busy[worker.index] += report.busy
            if report.gpu_memory_used is not None:
                self.allocated[worker.index] = max(self.allocated.get(worker.index, 0), report.gpu_memory_used)
                self.total = report.gpu_memory_total
        if self._smi:
            used = await nvidia_smi_used_mib(self._smi)
            if used is None:
                self._smi = None  # not usable here: stop asking
            else:
                self.smi_used_mib = max(self.smi_used_mib or 0, used)

    def report(self) -> dict:
        gib = 1024 ** 3
        return {
            "samples": dict(self.answered),
            "busy_share": {str(k): round(self.busy[k] / n, 2) for k, n in sorted(self.answered.items())},
            "gpu_memory": {
                "worker_allocated_peak_gib": {str(k): round(v / gib, 2) for k, v in sorted(self.allocated.items())},
                "worker_allocated_peak_sum_gib": round(sum(self.allocated.values()) / gib, 2) if self.allocated else None,
                "gpu_total_gib": round(self.total / gib, 2) if self.total else None,
                "nvidia_smi_used_peak_gib": round(self.smi_used_mib / 1024, 2) if self.smi_used_mib is not None else None,
            },
        }


async def nvidia_smi_used_mib(smi: str) -> int | None:
    try:
        process = await asyncio.create_subprocess_exec(
            smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 5)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None
    if process.returncode != 0:
        return None
    try:
        return sum(int(line) for line in out.decode().split())
    except ValueError:
        return None


# -- worker alone ----------------------------------------------------------------------------------------


async def generate_one(client: WorkerClient, params: GenerateParams) -> dict:
    """Sent -> first PNG back (client side), and the worker's own Done.seconds."""
    sent = time.time()
    image_at = done_s = None
    async for message in client.generate(client.new_id(), params):
        if isinstance(message, ImageReady) and image_at is None:
            image_at = time.time()
        elif isinstance(message, Done):
            done_s = message.seconds
    end = time.time()
    return {"sent": sent, "image_at": image_at, "end": end, "to_png_s": round((image_at or end) - sent, 4),
            "done_s": done_s}


async def worker_alone(args, worker: Worker, start: dict) -> dict:
    """The baseline on worker 1, just started and warmed up alone: the lone images, then the burst's jobs one
    after another. Worker 1 keeps running: it is the first worker of every pass through the bot."""
    size = job_size(args)
    client = worker.client
    result: dict = {"ready_s": start["ready_s"], "start_to_ready_s": start["start_to_ready_s"],
                    "warmup_s": start["warmup_s"], "device": client.device, "model": client.model_name}
    single = [await generate_one(client, GenerateParams(prompt=prompt, seeds=[seed], **size))
              for prompt, seed in lone_prompts("single", args.single)]
    result["single"] = {"to_png_s": [r["to_png_s"] for r in single], "done_s": [r["done_s"] for r in single]}
    jobs = baseline_jobs(args.members, args.per_member, args.cap)
    log(f"worker alone: {len(jobs)} jobs one after another")
    async with WorkerSampler([worker]) as sampler:
        runs = [await generate_one(client, GenerateParams(prompt=prompt, seeds=[seed], **size))
                for _, _, prompt, seed in jobs]
    first = runs[0]["sent"] if runs else None
    last = max((r["image_at"] or r["end"] for r in runs), default=None)
    elapsed = round(last - first, 3) if runs and first is not None and last is not None else None
    result.update({
        "images": sum(1 for r in runs if r["image_at"] is not None),
        "elapsed_s": elapsed,
        "images_per_min": per_min(sum(1 for r in runs if r["image_at"] is not None), elapsed),
        "per_image_s": summary([r["to_png_s"] for r in runs], 0.5, 0.95),
        "done_s": summary([r["done_s"] for r in runs if r["done_s"] is not None], 0.5),
        # the best a serial worker does for a burst sent at once: completion time from the first request
        "latency_if_sent_at_once_s": summary([round((r["image_at"] or r["end"]) - first, 4) for r in runs]
                                             if first is not None else [], 0.5, 0.95),
        "workers": sampler.report(),
    })
    log(f"  {result['images']} images in {elapsed} s: {result['images_per_min']} images/min")
    return result


# -- through the bot ------------------------------------------------------------------------------------


class Tracker:
    """Interactions sent by the bench and what became of them, read from the fake's state."""

    def __init__(self, fake: FakeDiscord):
        self.fake = fake
        self.sent: dict[int, dict] = {}  # interaction id -> {"ix", "prompt", "member", "sent"}
        self.by_prompt: dict[str, int] = {}
        self._parsed: dict[tuple, list[dict]] = {}  # (message id, attachment ids) -> text chunks of its PNGs
        self._callback_status: dict[int, int | None] = {}  # interaction id -> status of its first callback

    async def send(self, prompt: str, seed: int, args, user: dict, member: int | None = None) -> int:
        options = {"prompt": prompt, "seed": seed, "steps": args.steps, "aspect": args.aspect}
        ix = await self.fake.slash_command("imagine", options, user=user)
        self.sent[ix.id] = {"ix": ix, "prompt": prompt, "member": member, "sent": time.time()}
        self.by_prompt[prompt] = ix.id
        return ix.id

    def deliveries(self) -> dict[int, list[dict]]:
        """interaction id -> [{"message", "at", "width", "height"}] for each delivered PNG of its prompt."""
        out: dict[int, list[dict]] = {}
        for msg in list(self.fake.messages.values()):
            if msg.deleted or not msg.attachments:
                continue
            key = (msg.id, tuple(a["id"] for a in msg.attachments))
            if key not in self._parsed:
                self._parsed[key] = [png_text(data) for data in pngs(msg)]
            texts = self._parsed[key]
            if not texts:
                continue
            at = next((v["at"] for v in msg.history if any(n.endswith(".png") for n in v["attachments"])), None)
            for text in texts:
                iid = self.by_prompt.get(text.get("prompt", ""))
                if iid is not None:
                    out.setdefault(iid, []).append({"message": msg.id, "at": at, "width": text.get("width"),
                                                    "height": text.get("height")})
        return out

    def failed_jobs(self) -> set[int]:
        return {int(m.group(1)) for msg in list(self.fake.messages.values())
                if (m := FAILED.search(msg.content or ""))}

    def outcome(self, iid: int) -> dict:
        """{"state": pending|accepted|refused, "reason", "text", "job"}."""
        ix = self.sent[iid]["ix"]
        if not ix.callbacks:
            status = self._callback_status.get(iid)
            if status is not None and status >= 400:  # e.g. after the 3 s deadline: Discord drops it
                return {"state": "lost", "reason": f"callback answered {status}", "text": ""}
            return {"state": "pending"}
        first = ix.callbacks[0]
        if first.get("type") == 4:
            text = (first.get("data") or {}).get("content") or ""
            return {"state": "refused", "reason": refusal_reason(text), "text": text}
        private = refusal_text(ix)  # refused after the public "thinking…": deleted, an ephemeral follow-up says why
        if private:
            return {"state": "refused", "reason": refusal_reason(private), "text": private}
        original = ix.original
        found = JOB_ID.search(original.content or "") if original is not None else None
        if found:
            return {"state": "accepted", "job": int(found.group(1))}
        if original is not None and not original.loading:
            return {"state": "refused", "reason": "other", "text": original.content or ""}
        return {"state": "deferred"}  # thinking...: no job number shown (yet)

    def resolved(self, iids: list[int]) -> tuple[bool, dict]:
        self._callback_status = {iid: status for iid, (_, status) in self.first_callback_at().items()}
        delivered = self.deliveries()
        failed = self.failed_jobs()
        done = True
        for iid in iids:
            outcome = self.outcome(iid)
            if iid in delivered or outcome["state"] in ("refused", "lost"):
                continue
            if outcome["state"] == "accepted" and outcome["job"] in failed:
                continue
            done = False
        return done, delivered

    async def wait(self, iids: list[int], timeout: float, what: str) -> tuple[bool, dict]:
        deadline = time.monotonic() + timeout
        while True:
            done, delivered = self.resolved(iids)
            if done or time.monotonic() > deadline:
                if not done:
                    log(f"  timed out after {timeout:.0f} s waiting for {what}")
                return done, delivered
            await asyncio.sleep(0.25)

    def first_callback_at(self) -> dict[int, tuple[float, int | None]]:
        """interaction id -> (arrival time, status) of its first callback POST."""
        out: dict[int, tuple[float, int | None]] = {}
        for record in list(self.fake.requests):
            if record.method == "POST" and record.path.startswith("/interactions/") and record.path.endswith("/callback"):
                iid = int(record.path.split("/")[2])
                if iid not in out:
                    out[iid] = (record.at, record.status)
        return out


def refusal_reason(text: str) -> str:
    if "jobs in the queue" in text or "the limit is" in text:
        return "per_member_cap"
    if "Slow down" in text:
        return "rate_limit"
    return "other"


async def lone_images(tracker: Tracker, args, user: dict, kind: str, count: int, timeout: float) -> list[dict]:
    """One /imagine at a time, each waited for: interaction -> PNG."""
    results = []
    for prompt, seed in lone_prompts(kind, count):
        iid = await tracker.send(prompt, seed, args, user)
        done, delivered = await tracker.wait([iid], timeout, f"the {kind} image")
        entry = {"prompt": prompt, "outcome": tracker.outcome(iid)}
        if iid in delivered:
            entry["to_png_s"] = round(delivered[iid][0]["at"] - tracker.sent[iid]["sent"], 4)
            entry["embed_time_s"] = embed_time(tracker.fake, delivered[iid][0]["message"])
        results.append(entry)
        if not done:
            break
    return results


def embed_time(fake: FakeDiscord, message_id: int) -> float | None:
    """The worker's Done.seconds as the bot shows it in the result embed ("Time", 0.1 s resolution)."""
    for embed in fake.messages[message_id].embeds:
        for field in embed.get("fields", []):
            found = re.match(r"([\d.]+) s", field.get("value", "")) if field.get("name") == "Time" else None
            if found:
                return float(found.group(1))
    return None


def pass_through_env() -> dict:
    """What the bot and the workers inherit from here; PYTHONPATH keeps the repository root first and any
    entries set here after it (e.g. wheels unpacked into /tmp/site on a machine without the project's venv)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASS_PREFIXES) or k in PASS_NAMES}
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *extra])
    return env


async def through_the_bot(args, fake: FakeDiscord, bot: BotProcess, workers: list[Worker],
                          expected_single_s: float | None) -> dict:
    result: dict = {}
    tracker = Tracker(fake)
    started = time.time()
    log(f"through the bot: python -m bot (log {bot.log_path})")
    await bot.start()
    result["bot_ready_s"] = round(time.time() - started, 2)
    log(f"  bot connected after {result['bot_ready_s']} s; a warm-up /imagine shows it reaches its workers")
    # The workers are warm already; the warm-up /imagine waits until the bot has connected to one of them.
    warm = await lone_images(tracker, args, fake.alice, "warm-up", max(1, args.warmup), args.ready_timeout)
    if "to_png_s" not in warm[-1]:
        raise RuntimeError(f"the warm-up /imagine was not delivered: {warm[-1]['outcome']}")
    result["start_to_first_png_s"] = round(time.time() - started, 2)
    lone_timeout = max(60.0, 20 * (expected_single_s or 5.0))
    result["single"] = await lone_images(tracker, args, fake.alice, "single", args.single, lone_timeout)
    log(f"  single /imagine, interaction -> PNG: {[s.get('to_png_s') for s in result['single']]} s")

    members = [fake.add_user(f"member{m:02d}") for m in range(args.members)]
    await asyncio.sleep(0.2)  # GUILD_MEMBER_ADD reaches the bot before their interactions
    jobs = burst_jobs(args.members, args.per_member)
    fake.ratelimiter.reset_counters()
    violations_before = len(fake.spec_violations)
    log(f"  burst: {len(jobs)} /imagine from {args.members} members, concurrently")
    burst_started = time.time()
    async with WorkerSampler(workers) as sampler:
        iids = await asyncio.gather(*(tracker.send(prompt, seed, args, members[m], member=m)
                                      for m, _, prompt, seed in jobs))
        sent_s = round(time.time() - burst_started, 3)
        timeout = args.burst_timeout or max(120.0, 3 * len(jobs) * (expected_single_s or 5.0) + 60)
        complete, delivered = await tracker.wait(list(iids), timeout, "the burst")
    result["workers"] = sampler.report()
    await asyncio.sleep(args.settle)  # a duplicate delivery would show up here
    delivered = tracker.deliveries()
    result["burst"] = burst_report(args, tracker, list(iids), delivered, complete, sent_s)
    result["burst"]["spec_violations"] = fake.spec_violations[violations_before:][:20]
    stats = fake.ratelimit_stats()
    result["burst"]["ratelimits"] = {
        "enabled": fake.rate_limits.enabled,
        "429": stats["429"], "429_total": sum(stats["429"].values()),
        "emptied": stats["emptied"], "emptied_total": sum(stats["emptied"].values()),
        "stalls": stats["stalls"], "requests_per_route": stats["requests_per_route"],
    }
    return result


def burst_report(args, tracker: Tracker, iids: list[int], delivered: dict, complete: bool, sent_s: float) -> dict:
    outcomes = {iid: tracker.outcome(iid) for iid in iids}
    failed = tracker.failed_jobs()
    callbacks = tracker.first_callback_at()
    accepted = [iid for iid in iids if outcomes[iid]["state"] == "accepted"]
    refused = [iid for iid in iids if outcomes[iid]["state"] == "refused"]
    # deferred but no job number shown: counted as accepted when its PNG came (the position edit failed)
    silent = [iid for iid in iids if outcomes[iid]["state"] in ("deferred", "pending") and iid in delivered]
    accepted_all = accepted + silent
    lost = [iid for iid in iids if outcomes[iid]["state"] == "lost" and iid not in delivered]
    unresolved = [iid for iid in iids if iid not in accepted_all and iid not in refused and iid not in lost]
    images = sum(len(delivered.get(iid, [])) for iid in iids)
    first_sent = min(tracker.sent[iid]["sent"] for iid in iids)
    png_at = {iid: min(d["at"] for d in delivered[iid]) for iid in iids if iid in delivered}
    last_png = max(png_at.values(), default=None)
    elapsed = round(last_png - first_sent, 3) if last_png is not None else None
    latencies = [png_at[iid] - tracker.sent[iid]["sent"] for iid in png_at]
    first_cb = [callbacks[iid][0] - tracker.sent[iid]["sent"] for iid in iids if iid in callbacks]
    late = [iid for iid in iids if iid in callbacks and callbacks[iid][1] not in (200, 204)]
    per_member = Counter(tracker.sent[iid]["member"] for iid in accepted_all)
    reasons = Counter(outcomes[iid]["reason"] for iid in refused)
    sizes = Counter(f"{d['width']}x{d['height']}" for iid in iids for d in delivered.get(iid, []))
    ordered = sorted(png_at.values())
    intervals = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
    worker_s = [t for iid in png_at if (t := embed_time(tracker.fake, delivered[iid][0]["message"])) is not None]
    return {
        "sent": len(iids), "send_s": sent_s, "complete": complete,
        "accepted": len(accepted_all), "accepted_without_job_number": len(silent),
        "refused": len(refused), "refused_by": dict(reasons),
        "refusal_examples": sorted({outcomes[iid]["text"][:160] for iid in refused})[:3],
        "lost": len(lost),  # the fake refused the callback (late): the user saw "interaction failed"
        "unresolved": len(unresolved),
        "expected_refused_by_cap": args.members * max(0, args.per_member - args.cap),
        "accepted_per_member": dict(sorted(Counter(per_member[m] for m in range(args.members)).items())),
        "images_delivered": images,
        "delivered_exactly_once": sum(1 for iid in accepted_all if len(delivered.get(iid, [])) == 1),
        "duplicates": sum(max(0, len(delivered.get(iid, [])) - 1) for iid in iids),
        "delivered_to_refused": sum(1 for iid in refused if iid in delivered),
        "not_delivered": sum(1 for iid in accepted_all if iid not in delivered),
        "failed_jobs": sum(1 for iid in accepted if outcomes[iid]["job"] in failed),
        "sizes": dict(sizes),
        "elapsed_s": elapsed,
        "images_per_min": per_min(images, elapsed),
        "png_latency_s": summary(latencies, 0.5, 0.95),
        "first_callback_s": summary(first_cb, 0.5, 0.99),
        "png_interval_s": summary(intervals, 0.5),
        # the worker's own seconds per job as the bot shows them (embed "Time", 0.1 s resolution):
        # their sum over the elapsed time is how busy the bot kept the worker
        "worker_time_s": summary(worker_s, 0.5),
        "worker_busy_fraction": round(sum(worker_s) / elapsed, 3) if worker_s and elapsed else None,
        "callbacks_missing": sum(1 for iid in iids if iid not in callbacks),
        "callbacks_failed": len(late),
    }


# -- the run --------------------------------------------------------------------------------------------


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


async def bot_pass(args, workers: list[Worker], work_dir: Path, single_s: float) -> dict:
    """One pass through the bot with these workers: a fresh fake Discord, a fresh bot with its own DATA_DIR
    (so a fresh database and queue), every worker in its WORKERS, the same burst as every other pass."""
    count = len(workers)
    bot_dir = work_dir / f"bot-{count}-workers" / "data"
    bot_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {**pass_through_env(), "RATE_LIMIT_COUNT": str(args.rate_limit_count), "ZIMAGE_MODEL": args.model,
           "WORKER_MODE": "external", "WORKERS": ",".join(f"unix:{worker.socket}" for worker in workers),
           "LOG_LEVEL": args.log_level}
    if args.max_queued is not None:
        env["MAX_QUEUED_PER_USER"] = str(args.max_queued)
    fake = FakeDiscord()
    await fake.start()
    bot = BotProcess(fake, bot_dir, **env)
    log(f"pass with {count} worker{'s' if count > 1 else ''}: WORKERS={env['WORKERS']}")
    result: dict = {}
    try:
        result = await through_the_bot(args, fake, bot, workers, single_s)
    finally:
        result["exit_code"] = await bot.stop()
        if args.keep_log:
            result["log_tail"] = bot.log()[-4000:]
        await fake.stop()
    return result


def compare(alone: dict, bot: dict) -> dict:
    burst = bot.get("burst", {})
    out: dict = {}
    if alone.get("images_per_min") and burst.get("images_per_min"):
        out["throughput_ratio"] = round(burst["images_per_min"] / alone["images_per_min"], 3)
    bot_single = [s["to_png_s"] for s in bot.get("single", []) if "to_png_s" in s]
    worker_single = alone.get("single", {}).get("to_png_s", [])
    if bot_single and worker_single:
        overhead = statistics.median(bot_single) - statistics.median(worker_single)
        out["single"] = {"bot_median_s": round(statistics.median(bot_single), 4),
                         "worker_median_s": round(statistics.median(worker_single), 4),
                         "worker_done_median_s": round(statistics.median(alone["single"]["done_s"]), 4),
                         "overhead_s": round(overhead, 4), "target_s": TARGET_OVERHEAD_S,
                         "met": overhead <= TARGET_OVERHEAD_S}
    return out


def overlap(passes: list[dict]) -> dict:
    """Each pass's headline figures by its worker count, and against the 1-worker pass (else the first)."""
    base = next((p for p in passes if p["workers"] == 1), passes[0]) if passes else None
    out: dict = {}
    for entry in passes:
        burst = entry["bot"].get("burst", {})
        figures: dict = {
            "images_per_min": burst.get("images_per_min"),
            "ratio_to_worker_alone": entry["comparison"].get("throughput_ratio"),
            "png_latency_p50_s": burst.get("png_latency_s", {}).get("p50"),
            "png_latency_p95_s": burst.get("png_latency_s", {}).get("p95"),
            "first_callback_p50_s": burst.get("first_callback_s", {}).get("p50"),
            "first_callback_p99_s": burst.get("first_callback_s", {}).get("p99"),
            "429s": burst.get("ratelimits", {}).get("429_total"),
            "delivered_exactly_once": burst.get("delivered_exactly_once"),
            "busy_share": entry["bot"].get("workers", {}).get("busy_share"),
            "gpu_memory": entry["bot"].get("workers", {}).get("gpu_memory"),
        }
        base_ipm = base["bot"].get("burst", {}).get("images_per_min") if base else None
        if base is not None and base is not entry and base_ipm and figures["images_per_min"]:
            figures["vs_workers"] = base["workers"]
            figures["images_per_min_ratio"] = round(figures["images_per_min"] / base_ipm, 3)
        out[str(entry["workers"])] = figures
    return out


# -- the report ----------------------------------------------------------------------------------------


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    return str(value)


def render(results: dict) -> str:
    """The tables: one column per pass through the bot beside the worker alone (with one pass, the tables the
    bench printed before --workers, plus the GPU memory row)."""
    cfg, alone, passes = results["config"], results["worker_alone"], results["passes"]
    multi = len(passes) > 1
    bots = [entry["bot"] for entry in passes]
    bursts = [bot.get("burst", {}) for bot in bots]
    cmps = [entry["comparison"] for entry in passes]
    rls = [burst.get("ratelimits", {}) for burst in bursts]
    lats = [burst.get("png_latency_s", {}) for burst in bursts]
    cbs = [burst.get("first_callback_s", {}) for burst in bursts]
    wlat = alone.get("latency_if_sent_at_once_s", {})
    names = [workers_label(entry["workers"]) for entry in passes]
    where = "one GPU" if str(cfg.get("device") or "").startswith("cuda") else f"the {cfg.get('device')}"

    def row(label: str, first: str, cells: list[str]) -> str:
        return "| " + " | ".join([label, first, *cells]) + " |"

    def burst_row(label: str, cells: list[str]) -> str:
        return "| " + " | ".join([label, *cells]) + " |"

    busy_note = "(sum of embed times / elapsed)"
    lines = [
        f"## End-to-end /imagine: {cfg['model']} on {cfg.get('device')}, {cfg['width']}x{cfg['height']} "
        f"({cfg['aspect']}), {cfg['steps']} steps; burst {cfg['members']} members x {cfg['per_member']} = "
        f"{cfg['interactions']} interactions" + (f"; passes with {', '.join(names)} on {where}" if multi else ""),
        "",
    ]
    if multi:
        lines += [row("metric", "worker alone (WorkerClient, serial)", [f"through the bot, {name}" for name in names]),
                  "|---|---|" + "---|" * len(passes)]
    else:
        lines += ["| metric | worker alone (WorkerClient, serial) | through the bot (fake Discord, rate limits on) |",
                  "|---|---|---|"]
    lines += [
        row("images", fmt(alone.get("images")), [fmt(b.get("images_delivered")) for b in bursts]),
        row("elapsed (s)", fmt(alone.get("elapsed_s")),
            [f"{fmt(b.get('elapsed_s'))} (first interaction -> last PNG)" for b in bursts]),
        row("images/min", fmt(alone.get("images_per_min"), 2),
            [f"{fmt(b.get('images_per_min'), 2)} ({fmt(c.get('throughput_ratio'), 2)}x worker alone)"
             for b, c in zip(bursts, cmps, strict=True)]),
        row("latency p50 / p95 (s)", f"{fmt(wlat.get('p50'))} / {fmt(wlat.get('p95'))} (if all sent at once)",
            [f"{fmt(lat.get('p50'))} / {fmt(lat.get('p95'))} (interaction -> PNG)" for lat in lats]),
        row("s/image, median", f"{fmt(alone.get('per_image_s', {}).get('median'))} (request -> PNG)",
            [f"{fmt(b.get('worker_time_s', {}).get('median'), 1)} (worker's time in the embed); "
             f"{fmt(b.get('png_interval_s', {}).get('median'))} between PNGs" for b in bursts]),
        row("worker busy", "1 (by construction)",
            [f"{fmt(b.get('worker_busy_fraction'), 2)} " + (busy_note if entry["workers"] == 1 else
                                                            f"{busy_note[:-1]}; {entry['workers']} at most)")
             for b, entry in zip(bursts, passes, strict=True)]),
    ]
    singles = [c.get("single") for c in cmps]
    first_single = next((single for single in singles if single), None)
    if first_single:
        lines.append(row(f"lone /imagine -> PNG, median of {cfg['single']} (s)",
                         f"{fmt(first_single['worker_median_s'])} (worker Done.seconds "
                         f"{fmt(first_single['worker_done_median_s'])})",
                         [f"{fmt(single['bot_median_s'])} ({single['overhead_s']:+.3f})" if single else "n/a"
                          for single in singles]))
    lines.append(row("worker busy in health samples (each worker)", busy_cell(alone.get("workers")),
                     [busy_cell(bot.get("workers")) for bot in bots]))
    lines.append(row("GPU memory, peak (GiB)", memory_cell(alone.get("workers")),
                     [memory_cell(bot.get("workers")) for bot in bots]))
    lines += [""]
    if multi:
        lines += [burst_row("burst, through the bot", names), "|---|" + "---|" * len(passes)]
    else:
        lines += ["| burst, through the bot | value |", "|---|---|"]
    lines += [
        burst_row("interactions sent / accepted / refused / lost (callback refused) / unresolved",
                  [f"{fmt(b.get('sent'))} / {fmt(b.get('accepted'))} / {fmt(b.get('refused'))} / {fmt(b.get('lost'))}"
                   f" / {fmt(b.get('unresolved'))}" for b in bursts]),
        burst_row(f"refused by the per-member cap (expected {fmt(bursts[0].get('expected_refused_by_cap'))} with cap "
                  f"{cfg['max_queued_per_user']})",
                  [f"{fmt(b.get('refused_by', {}).get('per_member_cap', 0))} (all refusals: {fmt(b.get('refused_by'))})"
                   for b in bursts]),
        burst_row("accepted jobs per member",
                  [", ".join(f"{members} member(s) {count}" for count, members in b.get("accepted_per_member", {}).items())
                   for b in bursts]),
        burst_row("delivered exactly once / not delivered / duplicates / failed",
                  [f"{fmt(b.get('delivered_exactly_once'))} / {fmt(b.get('not_delivered'))} / "
                   f"{fmt(b.get('duplicates'))} / {fmt(b.get('failed_jobs'))}" for b in bursts]),
        burst_row("first callback p50 / p99 / max (s)",
                  [f"{fmt(cb.get('p50'))} / {fmt(cb.get('p99'))} / {fmt(cb.get('max'))} "
                   f"({fmt(b.get('callbacks_failed'))} refused by the fake, {fmt(b.get('callbacks_missing'))} missing)"
                   for b, cb in zip(bursts, cbs, strict=True)]),
        burst_row("429s received", [f"{fmt(rl.get('429_total'))} ({fmt(rl.get('429'))})" for rl in rls]),
        burst_row("buckets emptied (each makes discord.py wait)",
                  [f"{fmt(rl.get('emptied_total'))} ({fmt(rl.get('emptied'))})" for rl in rls]),
        burst_row("requests stalled behind a bucket", [fmt(rl.get("stalls")) for rl in rls]),
        burst_row("spec violations during the burst", [str(len(b.get("spec_violations", []))) for b in bursts]),
    ]
    lines.append("")
    for name, single in zip(names, singles, strict=True):
        if single:
            verdict = "met" if single["met"] else f"missed by {single['overhead_s'] - single['target_s']:.3f} s"
            lines.append(f"Target (issue #12: a lone /imagine within {single['target_s']} s of the worker's own time): "
                         f"{fmt(single['bot_median_s'])} s vs {fmt(single['worker_median_s'])} s = "
                         f"{single['overhead_s']:+.3f} s: {verdict}" + (f" ({name})" if multi else ""))
    for count, figures in results.get("by_workers", {}).items():
        if "images_per_min_ratio" in figures:
            base = results["by_workers"][str(figures["vs_workers"])]
            lines.append(f"{workers_label(int(count))} on {where} vs {workers_label(figures['vs_workers'])}: "
                         f"{fmt(figures['images_per_min_ratio'], 2)}x the images/min "
                         f"({fmt(figures['images_per_min'], 2)} vs {fmt(base['images_per_min'], 2)}), interaction -> PNG "
                         f"p50 {fmt(figures['png_latency_p50_s'])} vs {fmt(base['png_latency_p50_s'])} s")
    return "\n".join(lines).rstrip("\n")


def workers_label(count: int) -> str:
    return f"{count} worker{'s' if count != 1 else ''}"


def busy_cell(samples: dict | None) -> str:
    busy = (samples or {}).get("busy_share") or {}
    return ", ".join(f"w{k} {fmt(v, 2)}" for k, v in busy.items()) + " of samples" if busy else "n/a"


def memory_cell(samples: dict | None) -> str:
    """Peak GiB the workers' tensors held (summed over the workers) and the GPU's used memory (nvidia-smi)."""
    memory = (samples or {}).get("gpu_memory")
    if not memory or (memory.get("worker_allocated_peak_sum_gib") is None and memory.get("nvidia_smi_used_peak_gib") is None):
        return "n/a (no CUDA)"
    return (f"{fmt(memory.get('worker_allocated_peak_sum_gib'), 1)} allocated by the worker(s); "
            f"{fmt(memory.get('nvidia_smi_used_peak_gib'), 1)} used of {fmt(memory.get('gpu_total_gib'), 1)} (nvidia-smi)")


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

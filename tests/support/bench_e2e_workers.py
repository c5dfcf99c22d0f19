"""The worker side of the end-to-end benchmark (``bench_e2e.py``): the ``python -m gpu`` processes it starts
(``Worker``, ``scale_workers``), their health and GPU memory sampled during a phase (``WorkerSampler``), and the
baseline: the burst's jobs sent straight to worker 1 (``worker_alone``)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

# bench_e2e_common first: it puts the repository root on sys.path for the bot's and the worker's packages
from bench_e2e_common import baseline_jobs, log, lone_prompts, per_min, summary

from bot.worker.client import WorkerClient
from zimage_protocol.messages import Done, GenerateParams, ImageReady


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

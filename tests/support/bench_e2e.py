"""End-to-end benchmark (issue #12, "Keep the GPU busy"): the real bot, the tests' fake Discord, the real worker.

Run from the repository root (the script puts the root on sys.path itself, so no PYTHONPATH is needed)::

    python tests/support/bench_e2e.py                                    # tiny model, 20 members x 5 /imagine
    python tests/support/bench_e2e.py --members 4 --per-member 3 --steps 2 --json e2e.json   # a quick CPU run
    python tests/support/bench_e2e.py --model /models/zimage --json e2e.json                 # a saved pipeline (GPU)
    python tests/support/bench_e2e.py --model /tmp/zimage-random --build-model               # full-size random weights

In one run, on one machine, it measures:

1. **Worker alone** (the baseline): ``python -m gpu --model M --data-dir D --socket S`` started
   here, then the same jobs the burst will have accepted (members x min(per-member, cap), same
   prompts, seeds, size and steps) sent straight to it through ``bot.worker.client.WorkerClient``,
   one after another; the worker is stopped afterwards.
2. **Through the bot**: ``python -m bot`` (``tests/support/bot_process.py``, WORKER_MODE=spawn,
   RATE_LIMIT_COUNT high so only the per-member cap refuses, PROGRESS_INTERVAL left at its default,
   ZIMAGE_MODEL = the same model, the same DATA_DIR so a compile cache is shared) against
   ``tests/support/fake_discord`` with Discord-like rate-limit buckets on; a burst of members x per-member
   ``/imagine`` interactions sent concurrently.

Before either, one warm-up image (``--warmup``) and ``--single`` lone images: a single /imagine,
interaction -> PNG at the fake, against the worker's own time for the same request (sent -> PNG back;
also the worker's ``Done.seconds``). Issue #12's target: the bot adds at most 0.15 s.

Definitions (all timestamps ``time.time()``; the fake stamps what it receives):

* interaction sent: the fake has written INTERACTION_CREATE to the bot's websocket;
* first callback: the fake received ``POST /interactions/{id}/{token}/callback`` (RequestRecord.at);
* PNG delivered: the first version of a message (created or edited, any route) carrying a PNG; each
  PNG is matched to its interaction by the prompt in its text chunk (prompts are unique);
* through-the-bot images/min: delivered PNGs of the burst / (last PNG delivered - first interaction
  sent); worker-alone images/min: images / (first request sent - last image back);
* worker-alone "latency if all sent at once": each image's completion time from the first request,
  i.e. the best a strictly serial worker can do for a burst (the through-the-bot latencies' floor);
* 429s, emptied buckets and stalls: ``fake.ratelimit_stats()`` counted over the burst only.

The size comes from the bot's aspect choice (``--aspect``, default 1:1 = 1024x1024): the bot only
offers ~1 megapixel sizes (bot/sizes.py) and no setting lowers them, so there is no --size here; on the
CPU the tiny model pays mostly for the VAE at that size (~2-4 s per image on 2 cores).
Output: markdown tables on stdout, progress on stderr, every number in ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
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


# -- worker alone ----------------------------------------------------------------------------------------


async def start_worker(args, env: dict, data_dir: Path, socket_path: Path, log_path: Path):
    command = [sys.executable, "-m", "gpu", "--model", args.model, "--data-dir", str(data_dir),
               "--socket", str(socket_path)]
    with open(log_path, "ab") as out:
        process = await asyncio.create_subprocess_exec(*command, cwd=str(data_dir.parent), env=env,
                                                       stdout=out, stderr=out)
    return process


async def stop_process(process) -> int | None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode


async def wait_worker_ready(client: WorkerClient, process, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < timeout:
        if process.returncode is not None:
            raise RuntimeError(f"the baseline worker exited with code {process.returncode}")
        if client.connected:
            try:
                if (await client.health(timeout=10)).ready:
                    return loop.time() - started
            except Exception:  # noqa: BLE001 - not answering yet while it loads
                pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the baseline worker was not ready after {timeout:.0f} s")


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


async def worker_alone(args, env: dict, data_dir: Path, work_dir: Path) -> dict:
    size = {"width": args.width, "height": args.height, "steps": args.steps}
    socket_path = work_dir / "baseline.sock"
    log_path = work_dir / "worker-baseline.log"
    log(f"worker alone: python -m gpu --model {args.model} (log {log_path})")
    started = time.time()
    process = await start_worker(args, env, data_dir, socket_path, log_path)
    client = WorkerClient(socket_path)
    client.start()
    result: dict = {}
    try:
        result["ready_s"] = round(await wait_worker_ready(client, process, args.ready_timeout), 2)
        result["start_to_ready_s"] = round(time.time() - started, 2)
        result["device"], result["model"] = client.device, client.model_name
        log(f"  ready after {result['start_to_ready_s']} s on {client.device}")
        for prompt, seed in lone_prompts("warm-up", max(1, args.warmup)):
            await generate_one(client, GenerateParams(prompt=prompt, seeds=[seed], **size))
        single = [await generate_one(client, GenerateParams(prompt=prompt, seeds=[seed], **size))
                  for prompt, seed in lone_prompts("single", args.single)]
        result["single"] = {"to_png_s": [r["to_png_s"] for r in single], "done_s": [r["done_s"] for r in single]}
        jobs = baseline_jobs(args.members, args.per_member, args.cap)
        log(f"  {len(jobs)} jobs one after another")
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
        })
        log(f"  {result['images']} images in {elapsed} s: {result['images_per_min']} images/min")
    finally:
        await client.close()
        result["exit_code"] = await stop_process(process)
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


async def through_the_bot(args, fake: FakeDiscord, bot: BotProcess, expected_single_s: float | None) -> dict:
    result: dict = {}
    tracker = Tracker(fake)
    started = time.time()
    log(f"through the bot: python -m bot (log {bot.log_path})")
    await bot.start()
    result["bot_ready_s"] = round(time.time() - started, 2)
    log(f"  bot connected after {result['bot_ready_s']} s; waiting for its worker with a warm-up /imagine")
    # The warm-up also waits for the worker's model: the bot queues the job until the worker is ready.
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
    iids = await asyncio.gather(*(tracker.send(prompt, seed, args, members[m], member=m)
                                  for m, _, prompt, seed in jobs))
    sent_s = round(time.time() - burst_started, 3)
    timeout = args.burst_timeout or max(120.0, 3 * len(jobs) * (expected_single_s or 5.0) + 60)
    complete, delivered = await tracker.wait(list(iids), timeout, "the burst")
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
    data_dir = work_dir / "data"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    results: dict = {"config": {
        "command": "python tests/support/bench_e2e.py " + " ".join(sys.argv[1:]), "model": args.model,
        "aspect": args.aspect, "width": args.width, "height": args.height, "steps": args.steps,
        "members": args.members, "per_member": args.per_member, "interactions": args.members * args.per_member,
        "max_queued_per_user": args.cap, "rate_limit_count": args.rate_limit_count,
        "progress_interval": os.environ.get("PROGRESS_INTERVAL") or "default",
        "warmup": max(1, args.warmup), "single": args.single, "work_dir": str(work_dir), "cpu_count": os.cpu_count(),
        "target_overhead_s": TARGET_OVERHEAD_S,
    }}
    if args.build_model:
        results["build"] = build_model(Path(args.model))
    fake = FakeDiscord()
    await fake.start()
    try:
        env = {**pass_through_env(), "RATE_LIMIT_COUNT": str(args.rate_limit_count), "ZIMAGE_MODEL": args.model,
               "WORKER_MODE": "spawn", "LOG_LEVEL": args.log_level}
        if args.max_queued is not None:
            env["MAX_QUEUED_PER_USER"] = str(args.max_queued)
        bot = BotProcess(fake, data_dir, **env)
        results["worker_alone"] = await worker_alone(args, dict(bot.env), data_dir, work_dir)
        results["config"]["device"] = results["worker_alone"].get("device")
        single_s = statistics.median(results["worker_alone"]["single"]["to_png_s"] or [5.0])
        try:
            results["bot"] = await through_the_bot(args, fake, bot, single_s)
        finally:
            results.setdefault("bot", {})["exit_code"] = await bot.stop()
            if args.keep_log:
                results["bot"]["log_tail"] = bot.log()[-4000:]
    finally:
        await fake.stop()
    results["comparison"] = compare(results)
    return results


def compare(results: dict) -> dict:
    alone, bot = results["worker_alone"], results.get("bot", {})
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
    cfg, alone, bot = results["config"], results["worker_alone"], results.get("bot", {})
    burst, cmp_ = bot.get("burst", {}), results.get("comparison", {})
    rl = burst.get("ratelimits", {})
    ratio = cmp_.get("throughput_ratio")
    lat, cb = burst.get("png_latency_s", {}), burst.get("first_callback_s", {})
    wlat = alone.get("latency_if_sent_at_once_s", {})
    lines = [
        f"## End-to-end /imagine: {cfg['model']} on {cfg.get('device')}, {cfg['width']}x{cfg['height']} "
        f"({cfg['aspect']}), {cfg['steps']} steps; burst {cfg['members']} members x {cfg['per_member']} = "
        f"{cfg['interactions']} interactions",
        "",
        "| metric | worker alone (WorkerClient, serial) | through the bot (fake Discord, rate limits on) |",
        "|---|---|---|",
        f"| images | {fmt(alone.get('images'))} | {fmt(burst.get('images_delivered'))} |",
        f"| elapsed (s) | {fmt(alone.get('elapsed_s'))} | {fmt(burst.get('elapsed_s'))} (first interaction -> last PNG) |",
        f"| images/min | {fmt(alone.get('images_per_min'), 2)} | {fmt(burst.get('images_per_min'), 2)}"
        f" ({fmt(ratio, 2)}x worker alone) |",
        f"| latency p50 / p95 (s) | {fmt(wlat.get('p50'))} / {fmt(wlat.get('p95'))} (if all sent at once) | "
        f"{fmt(lat.get('p50'))} / {fmt(lat.get('p95'))} (interaction -> PNG) |",
        f"| s/image, median | {fmt(alone.get('per_image_s', {}).get('median'))} (request -> PNG) | "
        f"{fmt(burst.get('worker_time_s', {}).get('median'), 1)} (worker's time in the embed); "
        f"{fmt(burst.get('png_interval_s', {}).get('median'))} between PNGs |",
        f"| worker busy | 1 (by construction) | {fmt(burst.get('worker_busy_fraction'), 2)} "
        f"(sum of embed times / elapsed) |",
    ]
    single = cmp_.get("single")
    if single:
        verdict = "met" if single["met"] else f"missed by {single['overhead_s'] - single['target_s']:.3f} s"
        lines.append(f"| lone /imagine -> PNG, median of {cfg['single']} (s) | {fmt(single['worker_median_s'])} "
                     f"(worker Done.seconds {fmt(single['worker_done_median_s'])}) | {fmt(single['bot_median_s'])} "
                     f"({single['overhead_s']:+.3f}) |")
    lines += [
        "",
        "| burst, through the bot | value |",
        "|---|---|",
        f"| interactions sent / accepted / refused / lost (callback refused) / unresolved | {fmt(burst.get('sent'))} / "
        f"{fmt(burst.get('accepted'))} / {fmt(burst.get('refused'))} / {fmt(burst.get('lost'))} / "
        f"{fmt(burst.get('unresolved'))} |",
        f"| refused by the per-member cap (expected {fmt(burst.get('expected_refused_by_cap'))} with cap "
        f"{cfg['max_queued_per_user']}) | {fmt(burst.get('refused_by', {}).get('per_member_cap', 0))} "
        f"(all refusals: {fmt(burst.get('refused_by'))}) |",
        "| accepted jobs per member | "
        + ", ".join(f"{members} member(s) {count}" for count, members in burst.get("accepted_per_member", {}).items())
        + " |",
        f"| delivered exactly once / not delivered / duplicates / failed | {fmt(burst.get('delivered_exactly_once'))} / "
        f"{fmt(burst.get('not_delivered'))} / {fmt(burst.get('duplicates'))} / {fmt(burst.get('failed_jobs'))} |",
        f"| first callback p50 / p99 / max (s) | {fmt(cb.get('p50'))} / {fmt(cb.get('p99'))} / {fmt(cb.get('max'))} "
        f"({fmt(burst.get('callbacks_failed'))} refused by the fake, {fmt(burst.get('callbacks_missing'))} missing) |",
        f"| 429s received | {fmt(rl.get('429_total'))} ({fmt(rl.get('429'))}) |",
        f"| buckets emptied (each makes discord.py wait) | {fmt(rl.get('emptied_total'))} ({fmt(rl.get('emptied'))}) |",
        f"| requests stalled behind a bucket | {fmt(rl.get('stalls'))} |",
        f"| spec violations during the burst | {len(burst.get('spec_violations', []))} |",
    ]
    if single:
        lines += ["", f"Target (issue #12: a lone /imagine within {single['target_s']} s of the worker's own time): "
                      f"{fmt(single['bot_median_s'])} s vs {fmt(single['worker_median_s'])} s = "
                      f"{single['overhead_s']:+.3f} s: {verdict}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tests/support/bench_e2e.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (default; built in DATA_DIR/models) or a pipeline folder")
    parser.add_argument("--build-model", action="store_true",
                        help="first save full-size random weights to --model's folder (gpu.bench's save phase, CUDA) "
                             "unless it already holds a pipeline")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(render(results), flush=True)
    burst = results.get("bot", {}).get("burst", {})
    return 0 if burst.get("complete") and not burst.get("unresolved") and not burst.get("lost") else 1


if __name__ == "__main__":
    sys.exit(main())

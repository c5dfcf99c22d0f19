"""The bot side of the end-to-end benchmark (``bench_e2e.py``): one pass through ``python -m bot`` against a fresh
fake Discord (``bot_pass``, ``through_the_bot``), the interactions it sends and what became of them (``Tracker``),
and the burst's figures read from the fake (``burst_report``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path

# bench_e2e_common first: it puts the repository root on sys.path for the bot's and the worker's packages
from bench_e2e_common import burst_jobs, log, lone_prompts, pass_through_env, per_min, summary
from bench_e2e_workers import Worker, WorkerSampler

from bot_process import BotProcess
from e2e_helpers import png_text, pngs, refusal_text
from fake_discord import FakeDiscord

JOB_ID = re.compile(r"[Jj]ob #(\d+)")
FAILED = re.compile(r"[Jj]ob #(\d+) (?:failed|was cancelled)")


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



"""The report of the end-to-end benchmark (``bench_e2e.py``): each pass compared with the worker alone
(``compare``) and with the 1-worker pass (``overlap``), and the markdown tables it prints (``render``)."""

from __future__ import annotations

import statistics

from bench_e2e_common import TARGET_OVERHEAD_S


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


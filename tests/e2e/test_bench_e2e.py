"""`python tests/support/bench_e2e.py` keeps working: a small burst on the tiny model, every field present and sane.

One run with ``--workers 1,2`` covers both a pass with one worker and one with two workers (issue #13), each
checked the same way; the single-pass tables (the bench's default) are rendered from the first pass.
No speed is asserted (CI machines are shared); the counts must add up: every interaction is either
accepted or refused, every accepted job is delivered exactly once, latencies are positive.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from paths import ROOT

NUMBER = r"-?\d+(?:\.\d+)?"
MEMBERS, PER_MEMBER, CAP = 3, 2, 1

pytestmark = pytest.mark.e2e


def test_e2e_bench_reports_every_field(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIMAGE_", "FAKE_DISCORD_"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    out = tmp_path / "e2e.json"
    work = tmp_path / "work"
    completed = subprocess.run(
        [sys.executable, "tests/support/bench_e2e.py", "--members", str(MEMBERS), "--per-member", str(PER_MEMBER),
         "--max-queued", str(CAP), "--steps", "2", "--single", "1", "--warmup", "1", "--workers", "1,2",
         "--json", str(out), "--work-dir", str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    logs = "".join(path.read_text(errors="replace")[-2000:] for path in sorted(work.glob("bot-*/bot.log")))
    assert completed.returncode == 0, completed.stdout + completed.stderr[-3000:] + logs
    table = completed.stdout
    assert ("| metric | worker alone (WorkerClient, serial) | through the bot, 1 worker | through the bot, 2 workers |"
            in table), table
    assert re.search(rf"\| images/min \| {NUMBER} \| {NUMBER} \({NUMBER}x worker alone\) \| "
                     rf"{NUMBER} \({NUMBER}x worker alone\) \|", table), table
    assert "| burst, through the bot | 1 worker | 2 workers |" in table, table
    assert re.search(r"\| 429s received \| \d+ .*\| \d+ .*\|", table), table
    assert re.search(r"\| GPU memory, peak \(GiB\) \| n/a \(no CUDA\) \| n/a \(no CUDA\) \| n/a \(no CUDA\) \|", table), table
    assert re.search(rf"2 workers on the cpu vs 1 worker: {NUMBER}x the images/min", table), table
    for name in ("1 worker", "2 workers"):
        assert re.search(rf"Target \(issue #12: .*\): {NUMBER} s vs {NUMBER} s = [+-]{NUMBER} s: "
                         rf"(met|missed by {NUMBER} s) \({name}\)", table), table

    results = json.loads(out.read_text())
    config = results["config"]
    assert (config["width"], config["height"], config["steps"], config["device"]) == (1024, 1024, 2, "cpu")
    assert config["workers"] == [1, 2] and config["worker_mode"] == "external"

    alone = results["worker_alone"]
    assert alone["images"] == MEMBERS * min(PER_MEMBER, CAP) and alone["exit_code"] is not None
    assert alone["images_per_min"] > 0 and alone["elapsed_s"] > 0 and alone["per_image_s"]["median"] > 0
    assert all(t > 0 for t in alone["single"]["to_png_s"] + alone["single"]["done_s"])
    assert set(alone["workers"]["busy_share"]) == {"1"}
    assert [(w["worker"], w["for"]) for w in results["workers_started"]] == [(1, "worker alone"), (2, "2 workers")]

    passes = results["passes"]
    assert [p["workers"] for p in passes] == [1, 2]
    for entry in passes:
        check_pass(entry)
    # both workers of the 2-worker pass answered the health samples, and between them they worked
    samples = passes[1]["bot"]["workers"]
    assert set(samples["busy_share"]) == {"1", "2"} and sum(samples["busy_share"].values()) > 0
    assert samples["gpu_memory"]["worker_allocated_peak_sum_gib"] is None  # CPU: no GPU figures, not zeros
    # the figures' old places: the first pass
    assert results["bot"] == passes[0]["bot"] and results["comparison"] == passes[0]["comparison"]
    by_workers = results["by_workers"]
    assert set(by_workers) == {"1", "2"} and by_workers["2"]["vs_workers"] == 1
    assert by_workers["2"]["images_per_min_ratio"] > 0 and "vs_workers" not in by_workers["1"]
    assert by_workers["2"]["delivered_exactly_once"] == passes[1]["bot"]["burst"]["delivered_exactly_once"]

    # one pass (the default --workers 1): the tables the bench printed before --workers
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    import bench_e2e

    single = bench_e2e.render({**results, "passes": passes[:1], "by_workers": {"1": by_workers["1"]}})
    assert "| metric | worker alone (WorkerClient, serial) | through the bot (fake Discord, rate limits on) |" in single
    assert re.search(rf"\| images/min \| {NUMBER} \| {NUMBER} \({NUMBER}x worker alone\) \|\n", single), single
    assert re.search(rf"\| latency p50 / p95 \(s\) \| {NUMBER} / {NUMBER} .*\| {NUMBER} / {NUMBER} \(interaction -> PNG\) \|",
                     single), single
    assert re.search(rf"\| first callback p50 / p99 / max \(s\) \| {NUMBER} / {NUMBER} / {NUMBER} ", single), single
    assert re.search(r"\| 429s received \| \d+ ", single), single
    assert re.search(r"\| buckets emptied .* \| \d+ ", single), single
    assert re.search(rf"\| refused by the per-member cap \(expected {MEMBERS * (PER_MEMBER - CAP)} with cap {CAP}\) \| \d+ ",
                     single), single
    assert re.search(rf"Target \(issue #12: a lone /imagine within 0.15 s of the worker's own time\): {NUMBER} s vs "
                     rf"{NUMBER} s = [+-]{NUMBER} s: (met|missed by {NUMBER} s)$", single), single
    assert "worker" not in single.splitlines()[0] and " vs 1 worker" not in single


def check_pass(entry: dict) -> None:
    burst = entry["bot"]["burst"]
    sent = MEMBERS * PER_MEMBER
    assert burst["sent"] == sent and burst["complete"] and burst["unresolved"] == burst["lost"] == 0
    assert burst["accepted"] + burst["refused"] == sent
    assert set(burst["refused_by"]) <= {"per_member_cap"}, burst["refusal_examples"]
    assert burst["refused_by"].get("per_member_cap", 0) <= burst["expected_refused_by_cap"] == MEMBERS * (PER_MEMBER - CAP)
    assert sum(burst["accepted_per_member"].values()) == MEMBERS
    # every accepted job delivered exactly once, nothing for a refused one
    assert burst["images_delivered"] == burst["delivered_exactly_once"] == burst["accepted"] > 0
    assert burst["duplicates"] == burst["not_delivered"] == burst["delivered_to_refused"] == burst["failed_jobs"] == 0
    assert burst["sizes"] == {"1024x1024": burst["accepted"]}
    assert burst["elapsed_s"] > 0 and burst["images_per_min"] > 0
    latency, callback = burst["png_latency_s"], burst["first_callback_s"]
    assert latency["n"] == burst["accepted"] and 0 < latency["p50"] <= latency["p95"] <= latency["max"]
    assert callback["n"] == sent and 0 < callback["p50"] <= callback["p99"] <= callback["max"]
    assert burst["callbacks_missing"] == 0
    limits = burst["ratelimits"]
    assert limits["enabled"] is True
    assert limits["429_total"] == sum(limits["429"].values()) >= 0
    assert limits["emptied_total"] == sum(limits["emptied"].values()) >= 0
    assert limits["requests_per_route"]["POST /interactions/{id}/{token}/callback"] == sent

    single = entry["bot"]["single"]
    assert len(single) == 1 and single[0]["to_png_s"] > 0 and single[0]["outcome"]["state"] == "accepted"
    comparison = entry["comparison"]
    assert comparison["throughput_ratio"] > 0
    assert comparison["single"]["target_s"] == 0.15 and isinstance(comparison["single"]["met"], bool)
    assert entry["bot"]["exit_code"] is not None
    assert set(entry["bot"]["workers"]["busy_share"]) == {str(k) for k in range(1, entry["workers"] + 1)}

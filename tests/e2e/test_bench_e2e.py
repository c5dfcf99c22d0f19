"""`python tests/support/bench_e2e.py` keeps working: a small burst on the tiny model, every field present and sane.

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
    completed = subprocess.run(
        [sys.executable, "tests/support/bench_e2e.py", "--members", str(MEMBERS), "--per-member", str(PER_MEMBER),
         "--max-queued", str(CAP), "--steps", "2", "--single", "1", "--warmup", "1", "--json", str(out),
         "--work-dir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    log = (tmp_path / "work" / "bot.log")
    assert completed.returncode == 0, completed.stdout + completed.stderr[-3000:] + (
        log.read_text(errors="replace")[-3000:] if log.exists() else "")
    table = completed.stdout
    assert "| metric | worker alone (WorkerClient, serial) | through the bot (fake Discord, rate limits on) |" in table
    assert re.search(rf"\| images/min \| {NUMBER} \| {NUMBER} \({NUMBER}x worker alone\) \|", table), table
    assert re.search(rf"\| latency p50 / p95 \(s\) \| {NUMBER} / {NUMBER} .*\| {NUMBER} / {NUMBER} \(interaction -> PNG\) \|",
                     table), table
    assert re.search(rf"\| first callback p50 / p99 / max \(s\) \| {NUMBER} / {NUMBER} / {NUMBER} ", table), table
    assert re.search(r"\| 429s received \| \d+ ", table), table
    assert re.search(r"\| buckets emptied .* \| \d+ ", table), table
    assert re.search(rf"\| refused by the per-member cap \(expected {MEMBERS * (PER_MEMBER - CAP)} with cap {CAP}\) \| \d+ ",
                     table), table
    assert re.search(rf"Target \(issue #12: a lone /imagine within 0.15 s of the worker's own time\): {NUMBER} s vs "
                     rf"{NUMBER} s = [+-]{NUMBER} s: (met|missed by {NUMBER} s)", table), table

    results = json.loads(out.read_text())
    config = results["config"]
    assert (config["width"], config["height"], config["steps"], config["device"]) == (1024, 1024, 2, "cpu")

    alone = results["worker_alone"]
    assert alone["images"] == MEMBERS * min(PER_MEMBER, CAP) and alone["exit_code"] is not None
    assert alone["images_per_min"] > 0 and alone["elapsed_s"] > 0 and alone["per_image_s"]["median"] > 0
    assert all(t > 0 for t in alone["single"]["to_png_s"] + alone["single"]["done_s"])

    burst = results["bot"]["burst"]
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

    single = results["bot"]["single"]
    assert len(single) == 1 and single[0]["to_png_s"] > 0 and single[0]["outcome"]["state"] == "accepted"
    comparison = results["comparison"]
    assert comparison["throughput_ratio"] > 0
    assert comparison["single"]["target_s"] == 0.15 and isinstance(comparison["single"]["met"], bool)
    assert results["bot"]["exit_code"] is not None

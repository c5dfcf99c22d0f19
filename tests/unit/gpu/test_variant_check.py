"""gpu/bench/variant_check.py on the tiny model: every result button's job, made as the bot makes it, runs on a warm
engine and comes out at the size the bot asked for (the device run adds compile and memory figures)."""

from __future__ import annotations

import json

from bot.variants import VARIANTS
from gpu.bench.variant_check import main


def test_each_button_runs_on_a_warm_engine_at_its_size(tmp_path):
    out = tmp_path / "variants.json"
    assert main(["--tiny", "--steps", "2", "--parent", "128x128", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["button"]: row for row in result["rows"]}
    assert set(rows) == set(VARIANTS)
    assert all(row["made"] == row["output"] and not row["error"] for row in rows.values())
    assert rows["upscale"]["output"] == "256x256" and rows["left"]["output"] == "128x128"
    assert result["graphs_after_warm_up"] == 0 and result["compiled"] is False  # CPU: nothing is compiled

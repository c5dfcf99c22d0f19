"""The printed report: markdown tables for inference, LoRA training and latency while training."""

from __future__ import annotations

from .common import fmt as _fmt


def render_inference(results: dict) -> str:
    columns = results["columns"]
    stock = columns.get("stock", {})
    names = list(columns)
    sizes = list(stock.get("per_size", {}))
    header = "| metric | " + " | ".join(_column_title(n) for n in names) + " |"
    lines = ["### Image generation", "", header, "|---" * (len(names) + 1) + "|"]

    def row(label, getter, speed=None):
        cells = []
        for name in names:
            column = columns[name]
            if "error" in column:
                cells.append(f"error: {column['error']}")
                continue
            value = getter(column)
            cell = _fmt(value)
            if speed and name != "stock" and value:
                base = getter(stock)
                if base:
                    ratio = base / value if speed == "time" else value / base
                    cell += f" ({ratio:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    repeats = results["config"]["repeats"]
    for size in sizes:
        row(f"s/image {size} (median of {repeats})", lambda c, s=size: c.get("per_size", {}).get(s, {}).get("median_s"),
            speed="time")
    queue_n = results["config"]["queue"]
    row(f"images/min, queue of {queue_n} mixed-aspect requests",
        lambda c: c.get("queue", {}).get("images_per_min"), speed="rate")
    row("slowest image in the queue (s)", lambda c: c.get("queue", {}).get("max_image_s"))
    row("graphs compiled during timed runs (recompiles)", lambda c: c.get("graphs_compiled_during_timing"))
    row("compile + warm-up of all buckets, cold cache (s)", lambda c: c.get("warm_up_s"))
    row("graphs compiled in warm-up", lambda c: c.get("graphs_compiled_in_warm_up"))
    row("peak GPU memory (GiB)", lambda c: c.get("peak_gib"))
    row("peak GPU memory reserved (GiB)", lambda c: c.get("peak_reserved_gib"))
    row("same seed as stock, first size: PSNR dB / mean abs diff (8-bit)", lambda c: (
        f"{c['vs_stock_image']['psnr_db']} / {c['vs_stock_image']['mean_abs']}" if "vs_stock_image" in c else None))
    row("live previews per image", lambda c: c.get("previews", {}).get("per_image"))
    lines += preview_cost(columns)
    for key, title in (("warm_start", "ours, new process"),
                       ("warm_start_parallel_shards", "a sharded component's files read in parallel"),
                       ("warm_start_host_load", "baseline: the folder read to the host, then moved to the GPU")):
        warm = results.get(key)
        if warm is None:
            continue
        lines.append("")
        if "error" in warm:
            lines.append(f"Cold start with a warm compile cache ({title}): error: {warm['error']}")
            continue
        marks = warm["process_marks"]
        source = ("from_pretrained from disk + speed path" if marks.get("from_pretrained")
                  else f"pipeline built {_fmt(marks.get('built_s'), 1)} s, loaded")
        lines.append(
            f"Cold start with a warm compile cache ({title}): first image after "
            f"{_fmt(marks.get('first_image_s'), 1)} s (imports {_fmt(marks.get('imports_s'), 1)} s, "
            f"libraries {_fmt(marks.get('libraries_s'), 1)} s, {source} {_fmt(marks.get('loaded_s'), 1)} s, "
            f"warm-up done {_fmt(marks.get('ready_s'), 1)} s; {warm.get('graphs_compiled')} graph(s) compiled)")
    for name, prof in (results.get("profile") or {}).items():
        lines.append("")
        lines.append(f"GPU kernel time of one {prof['size']} image, {name}: {prof['kernel_ms']} ms of "
                     f"{prof['wall_ms_profiled']} ms wall (profiled): " + ", ".join(
                         f"{k} {v}" for k, v in prof["by_category_ms"].items()))
    post = results.get("postprocess_microbench")
    if post:
        lines.append("")
        lines.append(f"Image to PIL, 1024x1024: diffusers {post['stock_ms']} ms, on-GPU 8-bit {post['gpu_ms']} ms, "
                     f"identical pixels: {post['identical_pixels']}")
    micro = results.get("attention_microbench")
    if micro:
        lines.append("")
        lines.append("Attention alone, " + "x".join(map(str, micro["shape"])) + " bf16 (ms): " + ", ".join(
            f"{k[:-3]} {_fmt(v)}" for k, v in micro.items() if k.endswith("_ms")))
    return "\n".join(lines)


def render_lora(lora: dict) -> str:
    if "error" in lora:
        return f"### LoRA hot-swap\n\nerror: {lora['error']}"
    size = "x".join(map(str, lora["config"]["size"]))
    lines = [f"### LoRA switching (the worker's engine, {'compiled' if lora.get('compiled') else 'eager'})", "",
             f"Manager: {lora['manager']}; LoRAs: " + ", ".join(
                 f"{name} (rank {info['rank']}, {'/'.join(info['targets'])})" for name, info in lora["loras"].items()),
             "", "| | s/image " + size + " |", "|---|---|"]
    lines += [f"| {label} | {_fmt(value)} |" for label, value in lora["s_per_image"].items()]
    switch = lora["switch_s"]
    lines += ["", f"Slot warm-up: {lora['slot_warm_up_s']} s, {lora['graphs_in_slot_warm_up']} graph(s). "
              f"First activation (read from disk): " + ", ".join(
                  f"{k} {_fmt(v)} s" for k, v in lora["first_activation_s"].items()) + ". "
              f"Switches between LoRAs on the GPU: median {_fmt(switch['median'] * 1000, 1)} ms, max "
              f"{_fmt(switch['max'] * 1000, 1)} ms over {switch['count']}; graphs compiled while switching and "
              f"generating: **{lora['graphs_compiled_while_switching']}**; disk reads: {lora['disk_reads']}."]
    control = lora.get("control_peft")
    if control:
        lines.append(f"Control, the same LoRA as a plain peft adapter on the same compiled transformer: {control}")
    return "\n".join(lines)


def preview_cost(columns: dict) -> list[str]:
    """Live previews' cost: ours (previews on, the default) against the same run with --variant PREVIEWS=off."""
    ours, off = columns.get("ours", {}), columns.get("ours, PREVIEWS=off", {})
    if not ours.get("previews", {}).get("per_image") or "per_size" not in off:
        return []
    parts = []
    for size, timing in ours.get("per_size", {}).items():
        with_previews, without = timing.get("median_s"), off["per_size"].get(size, {}).get("median_s")
        if with_previews and without:
            parts.append(f"{size} {without:.3f} -> {with_previews:.3f} s/image "
                         f"({100 * (with_previews / without - 1):+.1f} %)")
    if not parts:
        return []
    return ["", f"Live previews ({ours['previews']['per_image']} per image, every {ours['previews']['every']} steps) "
                f"against PREVIEWS=off: " + ", ".join(parts)]


def _column_title(name: str) -> str:
    return {"stock": "stock diffusers (eager)", "ours": "ours (worker path)"}.get(name, name)



TRAINING_TITLES = {"stock": "stock peft loop", "ours": "ours (LoraTrainer, eager)",
                   "ours_compiled_no_graphs": "ours + regional compile, ZIMAGE_TRAIN_GRAPHS=off",
                   "ours_compiled_sync": "ours + regional compile + CUDA graphs, each loss read at once",
                   "ours_compiled": "ours + regional compile (worker default on CUDA)"}


def _table(columns: dict, titles: dict, rows: list, base: str | None) -> list[str]:
    """rows: (label, getter, kind): kind 'time' prints base/value as a speed-up ("1.52x"), 'slowdown'
    prints value/base ("1.35x base"), None no ratio. A column with an error shows it in its first row."""
    names = list(columns)
    lines = ["| metric | " + " | ".join(titles.get(n, n) for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for row_index, (label, getter, kind) in enumerate(rows):
        cells = []
        for name in names:
            column = columns[name]
            if "error" in column:
                cells.append(f"error: {column['error']}" if row_index == 0 else "–")
                continue
            value = getter(column)
            cell = _fmt(value)
            if kind and base and name != base and value and base in columns and "error" not in columns[base]:
                reference = getter(columns[base])
                if reference and kind == "time":
                    cell += f" ({reference / value:.2f}x)"
                elif reference:
                    cell += f" ({value / reference:.2f}x {titles.get(base, base).split(' ')[0]})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def render_training(training: dict) -> str:
    cfg, columns = training["config"], training.get("columns", {})
    steps = cfg["timed_steps"]
    lines = [f"### LoRA training: {cfg['resolution']} px, rank {cfg['rank']} (alpha {cfg['alpha']}) on "
             f"{','.join(cfg['target_modules'])}, batch 1, {cfg['images']} images", ""]
    dataset = training.get("dataset")
    if dataset:
        words = dataset["caption_words"]
        lines += [f"Dataset: {dataset['images']} photos in {len(dataset['sizes'])} sizes ({dataset['landscape']} "
                  f"landscape, {dataset['portrait']} portrait, {dataset['square']} square), captions of "
                  f"{words[0]}-{words[1]} words.", ""]
    rows = [
        (f"s/step (median of {steps})", lambda c: (c.get("s_per_step") or {}).get("median_s"), "time"),
        ("s/step min / max", lambda c: f"{_fmt((c.get('s_per_step') or {}).get('min_s'))} / "
                                       f"{_fmt((c.get('s_per_step') or {}).get('max_s'))}", None),
        (f"projected minutes for {cfg['projected_steps']} steps", lambda c: c.get("projected_minutes"), "time"),
        ("the same with the warm-up's compile + recording", lambda c: c.get("projected_minutes_with_warm_up"), "time"),
        ("step shapes (unpadded)", lambda c: f"{c.get('step_shapes')} ({c.get('unpadded_shapes')})"
                                             if c.get("step_shapes") is not None else None, None),
        ("peak GPU memory during the timed steps (GiB)", lambda c: c.get("peak_gib"), None),
        ("peak reserved, prepare / warm-up / timed steps (GiB)", lambda c: f"{_fmt(c.get('peak_reserved_gib_prepare'))}"
                                                                          f" / {_fmt(c.get('peak_reserved_gib_warm_up'))}"
                                                                          f" / {_fmt(c.get('peak_reserved_gib'))}", None),
        ("reserved before / after the run (GiB)", lambda c: f"{_fmt(c.get('reserved_gib_before'))} / "
                                                            f"{_fmt(c.get('reserved_gib_after_close'))}", None),
        ("CUDA graphs (ZIMAGE_TRAIN_GRAPHS)", lambda c: c.get("cuda_graphs"), None),
        ("host runs a step ahead (losses read a step late)", lambda c: c.get("pipelined"), None),
        ("host synchronisations per step (sync debug; not the event wait for the step before)",
         lambda c: c.get("syncs_per_step"), None),
        ("warm-up: steps, s, s beyond steady steps (compile + recording)",
         lambda c: f"{c.get('warm_up_steps')}, {_fmt(c.get('warm_up_s'), 2)}, {_fmt(c.get('warm_up_overhead_s'), 2)}",
         None),
        ("graphs compiled in warm-up / during timing", lambda c: f"{c.get('graphs_compiled_in_warm_up', 0)} / "
                                                           f"{c.get('graphs_compiled_during_timing', 0)}", None),
        ("optimizer", lambda c: c.get("optimizer"), None),
        ("LoRA weights, autocast", lambda c: f"{c.get('lora_dtype')}, autocast {c.get('autocast')}", None),
        ("text encoder during training", lambda c: c.get("text_encoder_device"), None),
        ("trainable parameters", lambda c: c.get("trainable_params"), None),
    ]
    lines += _table(columns, TRAINING_TITLES, rows, base="stock")
    for name, verdict in (training.get("target") or {}).items():
        if verdict is None:
            continue
        over = verdict["time_over_pct"]
        time_text = ("met" if verdict["time_met"] else
                     f"missed by {verdict['minutes'] - verdict['target_minutes']:.2f} min ({over:.0f} %)")
        memory = verdict.get("peak_gib")
        memory_text = "n/a" if memory is None else (
            f"{memory} GiB (allocated or reserved, the larger), " + ("met" if verdict["memory_met"] else
                                 f"missed by {memory - verdict['target_peak_gib']:.2f} GiB"))
        lines.append("")
        lines.append(f"Target ({verdict['target_minutes']:g} min for {cfg['projected_steps']} steps = "
                     f"<= {verdict['target_s_per_step']} s/step, peak <= {verdict['target_peak_gib']:g} GiB), "
                     f"{TRAINING_TITLES.get(name, name)}: {verdict['s_per_step']} s/step = {verdict['minutes']} min: "
                     f"{time_text}; peak {memory_text}")
    return "\n".join(lines)


def render_latency(latency: dict) -> str:
    cfg = latency["config"]
    width, height = cfg["size"]
    columns = {name: latency[name] for name in ("idle", "training") if name in latency}
    titles = {"idle": "idle (no training)", "training": "while a LoRA trains (interleaved)"}
    lines = [f"### /imagine latency while a LoRA trains: {width}x{height}, {cfg['steps']} steps, a fresh prompt "
             f"every ~{cfg['interval_s']:g} s, submit -> done on the one GPU thread", ""]

    def part(key, field="median_s"):
        return lambda c: (c.get(key) or {}).get(field)

    rows = [
        ("median latency (s)", part("latency_s"), "slowdown"),
        ("requests measured", part("latency_s", "n"), None),
        ("max latency (s)", part("latency_s", "max_s"), None),
        ("of which waiting for the GPU thread, median (s)", part("wait_s"), None),
        ("of which prompt encoding, median (s)", part("encode_s"), None),
        ("of which denoising + VAE, median (s)", part("generate_s"), None),
        ("first request after training started, cached prompt (s)", lambda c: (c.get("first_request") or {}).get(
            "latency_s"), None),
        ("training steps meanwhile (count, median s/step)", lambda c: (
            f"{c['training_steps_during']}, {_fmt(c['training_step_s'].get('median_s'), 4)}"
            if c.get("training") else "-"), None),
        ("graphs compiled during the phase (first request included)", lambda c: c.get("graphs_compiled"), None),
        ("peak GPU memory (GiB)", lambda c: c.get("peak_gib"), None),
    ]
    lines += _table(columns, titles, rows, base="idle")
    if latency.get("training", {}).get("training_error"):
        lines += ["", f"Training failed during the latency test: {latency['training']['training_error']}"]
    verdict = latency.get("target")
    if verdict:
        lines += ["", f"Target (median while training <= {verdict['target_ratio']:g}x idle): "
                      f"{verdict['training_median_s']} s vs {verdict['idle_median_s']} s = {verdict['ratio']}x: "
                      + ("met" if verdict["met"] else f"missed by {verdict['over_target_s']} s")]
    encoding = latency.get("encoding_while_training") or {}
    if "streamed_s" in encoding:
        diffs = [row["relative_max_diff"] for row in encoding["prompts"] if "relative_max_diff" in row]
        lines += ["", f"A new prompt while training (text encoder on the host): streamed through the GPU "
                      f"{encoding['streamed_s'].get('median_s')} s vs on the CPU {encoding['cpu_s'].get('median_s')} s "
                      f"(median of {len(encoding['prompts'])}); largest difference from the GPU-resident encoding, "
                      f"relative: {max(diffs) if diffs else 'n/a'}"]
    elif "error" in encoding:
        lines += ["", f"Streamed vs CPU encoding: error: {encoding['error']}"]
    return "\n".join(lines)


def render_report(results: dict) -> str:
    info = results["info"]
    parts = [f"GPU: {info['device']} | torch {info['torch']} | diffusers {info['diffusers']} | peft {info.get('peft')} "
             f"| {info['date_utc']} | {info['mode']}"]
    if results.get("columns"):
        parts.append(render_inference(results))
    if results.get("lora"):
        parts.append(render_lora(results["lora"]))
    if results.get("training"):
        parts.append(render_training(results["training"]))
    if results.get("latency"):
        parts.append(render_latency(results["latency"]))
    if results.get("enhancer"):
        from .enhancer import render_enhancer

        parts.append(render_enhancer(results["enhancer"]))
    return "\n\n".join(parts)

"""The phases that run on the worker's own ImageEngine: idle latency, training on its compiled transformer (with
and without CUDA graphs, and reading each loss at once), then latency while that trainer runs."""

from __future__ import annotations

from pathlib import Path

from . import latency as lat
from . import training as tr
from .common import error_text, free_memory, log
from .photo_set import write_dataset


def engine_phases(pipe, engine, results: dict, tiny: bool, work_dir: Path, data_dir: Path, left, save,
                  profile: bool = False) -> None:
    """Idle latency, training on the worker's (compiled) transformer, then latency while that trainer runs."""
    tcfg = tr.TINY_TRAIN if tiny else tr.FULL_TRAIN
    lcfg = lat.TINY_LATENCY if tiny else lat.FULL_LATENCY
    latency = results.get("latency")
    training = results.get("training")
    dataset_dir = work_dir / "dataset"
    if not (dataset_dir / "manifest.json").is_file():
        write_dataset(dataset_dir, tcfg["images"], tcfg["resolution"])
    gpu = lat.gpu_thread()

    def on_gpu(fn, *args, **kwargs):
        return gpu.submit(fn, *args, **kwargs).result()

    trainer = None
    try:
        if engine is None:
            log("ImageEngine for the training/latency phases (the worker's speed path)")
            engine, info = on_gpu(lat.load_engine, pipe, data_dir, lcfg)
        else:
            on_gpu(lat.on_thread_settings, engine)
            info = {"accel": vars(engine.accel).copy(), "reused": "the inference section's engine (all buckets warmed)"}
        idle_prompts = lat.fresh_prompts(lcfg["idle_requests"], "idle")
        if latency is not None:
            latency["engine"] = info
            log("latency: idle")
            latency["idle"] = lat.measure_latency(gpu, engine, None, lcfg, idle_prompts, lcfg["training_budget_s"])
            save()
        if training is not None:
            column = training["columns"]
            if not engine.accel.compiled:
                column["ours_compiled"] = {"error": "skipped: the worker does not compile here (CPU default; "
                                                    "ZIMAGE_COMPILE=on forces it)"}
            elif left() < 100:
                column["ours_compiled"] = {"error": "skipped: out of time"}
            else:
                graphs = engine.accel.train_graphs
                skipped = set(training["config"].get("skipped_columns", ()))
                if graphs and left() > 300 and "ours_compiled_no_graphs" not in skipped:  # the baseline of their gain
                    log("training: ours on the worker's compiled transformer, ZIMAGE_TRAIN_GRAPHS=off")
                    try:
                        column["ours_compiled_no_graphs"], _ = on_gpu(
                            tr.run_ours_training, engine.pipe, dataset_dir, work_dir, tcfg, "ours-compiled-no-graphs",
                            profile=profile)
                    except Exception as exc:  # noqa: BLE001
                        column["ours_compiled_no_graphs"] = {"error": error_text(exc)}
                    save()
                if left() > 200 and "ours_compiled_sync" not in skipped:  # each loss read at once: the pipelining's baseline
                    log("training: ours on the worker's compiled transformer, each loss read at once")
                    try:
                        column["ours_compiled_sync"], _ = on_gpu(
                            tr.run_ours_training, engine.pipe, dataset_dir, work_dir, tcfg, "ours-compiled-sync",
                            graphs=graphs, pipelined=False)
                    except Exception as exc:  # noqa: BLE001
                        column["ours_compiled_sync"] = {"error": error_text(exc)}
                    save()
                log(f"training: ours on the worker's compiled transformer (CUDA graphs: {graphs})")
                try:
                    column["ours_compiled"], trainer = on_gpu(
                        tr.run_ours_training, engine.pipe, dataset_dir, work_dir, tcfg, "ours-compiled",
                        keep=latency is not None, graphs=graphs, profile=profile)
                except Exception as exc:  # noqa: BLE001
                    log(f"ours (compiled) training failed: {error_text(exc)}")
                    column["ours_compiled"] = {"error": error_text(exc)}
            save()
        if latency is None:
            return
        if left() < 60:
            latency["training"] = {"error": "skipped: out of time"}
            return
        if trainer is None:
            log("latency: preparing a trainer")
            trainer, facts = on_gpu(tr.start_trainer, engine.pipe, dataset_dir, work_dir, tcfg, "latency",
                                    engine.accel.train_graphs)
            latency["trainer_warm_up_s"] = round(sum(facts.pop("warm")), 2)
            latency["trainer"] = facts  # step shapes, CUDA graphs, peak allocated / reserved in prepare + warm-up
            log(f"  trainer: {facts}")
        log("latency: while a LoRA trains")
        budget = max(10.0, min(lcfg["training_budget_s"], left() - 45))
        try:
            latency["training"] = lat.measure_latency(gpu, engine, trainer, lcfg, lat.fresh_prompts(
                lcfg["training_requests"], "train"), budget, warm_prompt=idle_prompts[0])
        except Exception as exc:  # noqa: BLE001
            log(f"latency while training failed: {error_text(exc)}")
            latency["training"] = {"error": error_text(exc)}
        if "idle" in latency:
            latency["target"] = lat.assess(latency["idle"], latency["training"], lcfg["target_ratio"])
        try:  # the encoder still on the host: streamed vs the CPU encoding of before, on prompts seen idle
            latency["encoding_while_training"] = on_gpu(lat.compare_encodings, engine, idle_prompts[:3])
            log(f"  new prompt while training: {latency['encoding_while_training']}")
        except Exception as exc:  # noqa: BLE001
            latency["encoding_while_training"] = {"error": error_text(exc)}
    finally:
        if trainer is not None:
            on_gpu(trainer.close)
        on_gpu(free_memory)
        gpu.shutdown(wait=True)

"""Training benchmarks (issue 5): throughput of the training loop and memory against the number of subjects.

1. Throughput: samples/s of :class:`bids_phydiff.train.loop.Trainer` steps (data loading, forward,
   backward, AdamW, EMA; validation off) for the tiny (32x32) and small (64x64) presets on the CPU.
2. Memory: peak RSS (ru_maxrss) of a process that builds the slice dataset of N phantom subjects and
   runs a few training steps, for N = 2 and N = 8 (goal: within 20% of each other).

Each measurement runs in its own subprocess. Prints a table and writes JSON (default
benchmarks/results/train.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child_throughput(preset: str, batch: int, steps: int, threads: int) -> dict:
    import torch

    from bids_phydiff.model.phydiff import PhyDiff
    from bids_phydiff.prep.adc import adc_atlas_from_files
    from bids_phydiff.train.config import TrainConfig
    from bids_phydiff.train.dataset import SliceDataset, SliceGrid
    from bids_phydiff.train.loop import Trainer
    from bids_phydiff.phantom.prepared_runs import phantom_training_data

    torch.set_num_threads(threads)
    size = {"tiny": 32, "small": 64}[preset]
    res = {"tiny": 4.0, "small": 3.0}[preset]
    with tempfile.TemporaryDirectory() as tmp:
        runs, grid, _, _ = phantom_training_data(Path(tmp), in_plane=(size, size), subjects=2, resolution=res,
                                                 directions=6, orientations=("RAS",))
        atlas, shells, _ = adc_atlas_from_files([(r.dwi, r.bval, r.mask) for r in runs])
        config = TrainConfig(model=preset, max_steps=steps + 2, batch_size=batch, val_every=0, checkpoint_every=0,
                             adapter_steps=0, warmup_steps=1)
        model_config = config.model_config().replace(adapter=None)
        sgrid = SliceGrid.for_multiple(grid.shape, model_config.backbone.size_multiple)
        data = SliceDataset(runs, sgrid, Path(tmp) / "cache", atlas, shells)
        trainer = Trainer(PhyDiff(model_config), config, data, None, torch.device("cpu"), progress=False)
        trainer.run(stop_at=2)  # warm-up steps
        t0 = time.perf_counter()
        trainer.run(stop_at=steps + 2)
        seconds = time.perf_counter() - t0
    return {"preset": preset, "image": f"{sgrid.padded[0]}x{sgrid.padded[1]}", "batch": batch, "steps": steps,
            "threads": threads, "step_ms": 1000 * seconds / steps, "samples_per_s": steps * batch / seconds}


def _child_memory(subjects: int, steps: int) -> dict:
    import torch

    from bids_phydiff.model.phydiff import PhyDiff
    from bids_phydiff.prep.adc import adc_atlas_from_files
    from bids_phydiff.train.config import TrainConfig
    from bids_phydiff.train.dataset import SliceDataset, SliceGrid
    from bids_phydiff.train.loop import Trainer
    from bids_phydiff.phantom.prepared_runs import phantom_training_data

    with tempfile.TemporaryDirectory() as tmp:
        # data are written first (by this process: its peak includes generation, as a group run's would not)
        runs, grid, _, _ = phantom_training_data(Path(tmp), in_plane=(32, 32), subjects=subjects)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # the group-level part: ADC atlas (streaming), caches (one volume at a time), memory-mapped samples, steps
        atlas, shells, _ = adc_atlas_from_files([(r.dwi, r.bval, r.mask) for r in runs])
        config = TrainConfig(model="tiny", max_steps=steps, batch_size=16, val_every=0, checkpoint_every=0,
                             adapter_steps=0, warmup_steps=1)
        model_config = config.model_config().replace(adapter=None)
        sgrid = SliceGrid.for_multiple(grid.shape, model_config.backbone.size_multiple)
        data = SliceDataset(runs, sgrid, Path(tmp) / "cache", atlas, shells)
        Trainer(PhyDiff(model_config), config, data, None, torch.device("cpu"), progress=False).run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"subjects": subjects, "samples": len(data), "steps": steps, "peak_rss_mb": peak / 1024,
            "peak_rss_before_training_mb": before / 1024}


def _run_child(kind: str, **kwargs) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_train as b; " \
           f"print('RESULT' + json.dumps(b._child_{kind}(**{kwargs!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("RESULT")][-1][6:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "train.json")
    args = parser.parse_args()
    throughput = [_run_child("throughput", preset="tiny", batch=64, steps=args.steps, threads=args.threads),
                  _run_child("throughput", preset="small", batch=16, steps=max(3, args.steps // 3), threads=args.threads)]
    memory = [_run_child("memory", subjects=n, steps=5) for n in (2, 8)]
    ratio = memory[1]["peak_rss_mb"] / memory[0]["peak_rss_mb"]
    print("| preset | image | batch | threads | step ms | samples/s |\n|---|---|---|---|---|---|")
    for r in throughput:
        print(f"| {r['preset']} | {r['image']} | {r['batch']} | {r['threads']} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} |")
    print("\n| subjects | samples | peak RSS MB (dataset + 5 steps) | RSS MB after data generation |\n|---|---|---|---|")
    for r in memory:
        print(f"| {r['subjects']} | {r['samples']} | {r['peak_rss_mb']:.0f} | {r['peak_rss_before_training_mb']:.0f} |")
    print(f"\npeak RSS 8 / 2 subjects: {ratio:.3f} (goal <= 1.20)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "processor": platform.processor(), "cpus": __import__("os").cpu_count()},
        "command": " ".join(["python"] + sys.argv), "throughput": throughput, "memory": memory,
        "memory_ratio_8_vs_2": ratio}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

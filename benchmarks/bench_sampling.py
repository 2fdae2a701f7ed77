"""Benchmark of the synthesis room: sampler throughput through ``synthesise()``.

Run: ``python benchmarks/bench_sampling.py [--preset tiny] [--device cpu] [--threads N] [--slices 4]
[--targets 2] [--batch-size 8] [--repeats 3] [--output benchmarks/results/sampling.json]``. Prints a markdown table
and writes the JSON.

One run times, on the same phantom volume (template at 6 mm, padded slices 24x32 for the tiny preset),
the same ``slices x targets`` (slice, gradient) items with the same model (random weights: the cost does not
depend on them):

- ``ddpm-1000``: ancestral DDPM from pure noise, 1000 model evaluations;
- ``ddpm-sdedit-0.8``: the official inference, SDEdit from the b0 noised to t = 799, 800 evaluations;
- ``ddim-50`` and ``ddim-20``: DDIM (eta 0) from SDEdit strength 0.8, 50 and 20 evaluations.

Each method runs ``--repeats`` times in interleaved rounds; the fastest round counts (the machine may be
shared). Reported per method: wall time, seconds per slice (one synthesised 2-D slice of one target), slices per
second, model evaluations, and the speed-up over ``ddpm-1000`` measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from bids_phydiff.model import PhyDiff, SamplerConfig, preset, resolve_device
from bids_phydiff.model.sampling import timesteps
from bids_phydiff.phantom.deformation import Deformation
from bids_phydiff.phantom.signal import TissueModel
from bids_phydiff.phantom.template import template_grid
from bids_phydiff.phantom.truth import render_truth
from bids_phydiff.prep.adc import AdcAccumulator
from bids_phydiff.prep.gradients import multishell_scheme
from bids_phydiff.synth import TargetScheme, slice_grid, synthesise

from machine import cpu_name  # benchmarks/machine.py (the script's folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results" / "sampling.json"
SHELLS = (1000.0, 2000.0)
METHODS = {
    "ddpm-1000": SamplerConfig(method="ddpm", start="noise"),
    "ddpm-sdedit-0.8": SamplerConfig(method="ddpm", start="sdedit", strength=0.8),
    "ddim-50": SamplerConfig(method="ddim", steps=50, start="sdedit", strength=0.8),
    "ddim-20": SamplerConfig(method="ddim", steps=20, start="sdedit", strength=0.8),
}


def phantom_inputs(slices: int) -> dict:
    truth = render_truth(template_grid(6), Deformation.identity(), TissueModel())
    mid = truth.shape[2] // 2
    zs = slice(mid - slices // 2, mid - slices // 2 + slices)
    b0 = truth.s0[:, :, zs].astype(np.float64)
    mask = b0 > 0
    table = multishell_scheme(list(SHELLS), 6, n_b0=1, seed=0)
    acc = AdcAccumulator(np.array(SHELLS), b0.shape)
    acc.add(truth.signal(table.bvals, table.bvecs)[:, :, zs], table.bvals, mask)
    return {"b0": b0, "mask": mask, "atlas": acc.atlas()}


def random_model(name: str, device: torch.device) -> PhyDiff:
    torch.manual_seed(0)
    model = PhyDiff(preset(name))
    with torch.no_grad():  # fill the zero-initialised parameters, as training would
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: tiny models gain nothing from more on a shared CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the fastest of each is kept")
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--targets", type=int, default=2, help="diffusion-weighted targets per slice")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    inputs = phantom_inputs(args.slices)
    model = random_model(args.preset, device)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(args.targets, 3))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    scheme = TargetScheme(np.linspace(SHELLS[0], SHELLS[1], args.targets), vecs)
    grid = slice_grid(inputs["b0"].shape, model)
    device_name = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    items = args.slices * args.targets
    # warm-up (attention backend choice, allocator)
    synthesise(model, inputs["b0"], inputs["mask"], scheme, inputs["atlas"], SHELLS,
               sampler=SamplerConfig(method="ddim", steps=2), batch_size=args.batch_size, progress=False)
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.repeats):  # interleaved rounds: a load spike on a shared machine hits every method
        for name, sampler in METHODS.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            mean, _ = synthesise(model, inputs["b0"], inputs["mask"], scheme, inputs["atlas"], SHELLS,
                                 sampler=sampler, batch_size=args.batch_size, seed=0, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
            assert np.all(np.isfinite(mean))
    rows = []
    for name, sampler in METHODS.items():
        evaluations = len(timesteps(sampler, model.schedule.num_steps))
        seconds = min(times[name])
        rows.append({"method": name, "model_evaluations": evaluations, "seconds": seconds,
                     "seconds_all_rounds": times[name],
                     "seconds_per_slice": seconds / items, "slices_per_second": items / seconds,
                     "ms_per_evaluation_per_slice": 1e3 * seconds / items / evaluations})
    reference = rows[0]["seconds"]
    for row in rows:
        row["speedup_vs_ddpm_1000"] = reference / row["seconds"]

    print(f"\nSampling through synthesise(): preset {args.preset}, grid {grid.shape[:2]} padded to {grid.padded}, "
          f"{args.slices} slices x {args.targets} targets = {items} items, batch {args.batch_size}, {device} "
          f"({device_name}), {torch.get_num_threads()} threads, fastest of {args.repeats} rounds\n")
    print("| method | model evaluations | wall s | s / slice | slices / s | ms / evaluation / slice | "
          "speed-up vs DDPM-1000 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['model_evaluations']} | {r['seconds']:.2f} | {r['seconds_per_slice']:.3f} | "
              f"{r['slices_per_second']:.2f} | {r['ms_per_evaluation_per_slice']:.3f} | "
              f"{r['speedup_vs_ddpm_1000']:.1f}x |")
    result = {
        "benchmark": "sampling",
        "preset": args.preset,
        "grid": list(inputs["b0"].shape),
        "slices": args.slices,
        "targets": args.targets,
        "items": items,
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": device_name,
        "padded": list(grid.padded),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

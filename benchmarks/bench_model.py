"""Benchmark of the model room: neighborhood-attention backends and backbone training steps.

Run: ``python benchmarks/bench_model.py [--device cpu|cuda] [--threads N] [--presets tiny,small]
[--precision fp32|bf16] [--compile] [--repeats 5]``. Prints markdown tables and writes
``benchmarks/results/model.json`` (``--output`` to change).

1. Attention, kernel 7, B=4, 4 heads, head dim 32 (``--attention-batch``, ``--heads``, ``--head-dim``), at
   16x16, 32x32 and 64x64 tokens: forward and forward+backward time of the dense masked SDPA reference, the
   torch backend (blocked/halo), flex (on CUDA) and natten (when importable; NATTEN runs forward only on CPU),
   and the TFLOP/s of the exact neighborhood-attention FLOPs.
2. Backbone training step (forward, backward, AdamW) per preset: time, samples/s, FLOPs of forward +
   backward counted by ``torch.utils.flop_counter`` (executed matmul FLOPs, halo work included), achieved
   GFLOP/s, and the fraction of a matrix-multiply peak measured in the same run with the same threads
   (before and after the benchmarks; the higher of the two).
3. With ``--synthesis-batch B``: one DDIM-50 (SDEdit 0.8) synthesis call on B slices per preset, and what
   a 270-volume x 110-slice scheme would take at that rate.

Goals: torch backend >= 2x faster than dense masked SDPA for forward+backward at 64x64 tokens; the
backbone step >= 40% of the measured matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from bids_phydiff.model import PRESET_IMAGE_SIZES, DiffusionBatch, PhyDiff, SamplerConfig, preset, resolve_device
from bids_phydiff.model import attention as att
from bids_phydiff.model.device import autocast

from machine import cpu_name  # benchmarks/machine.py (the script's folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results" / "model.json"
# training batches (the official training used 48 slices of 256x256)
BATCH_SIZES = {"cpu": {"tiny": 64, "small": 32, "paper": 2}, "cuda": {"tiny": 256, "small": 64, "paper": 16}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """Best GFLOP/s of square matrix products (the reference for 'fraction of peak')."""
    sizes = [1024, 2048] if device.type == "cpu" else [4096, 8192]
    best, rows = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        inner = max(1, int(4e10 / (2 * n**3))) if device.type == "cpu" else 10
        times = _time(lambda: [a @ b for _ in range(inner)], device, repeats)
        gflops = 2 * n**3 * inner / min(times) / 1e9
        rows[n] = gflops
        best = max(best, gflops)
    return {"gflops": best, "by_size": rows, "dtype": str(dtype).replace("torch.", "")}


# ---------------------------------------------------------------------------------------- attention


def attention_methods(device: torch.device) -> dict:
    methods = {
        "dense masked SDPA": lambda q, k, v: att.dense_neighborhood_attention(q, k, v, 7),
        # all tokens, no mask: a fused flash kernel; more FLOPs than NA, the speed such kernels reach
        "dense SDPA, no mask": lambda q, k, v: att.global_attention(q, k, v),
        "torch backend": lambda q, k, v: att.blocked_neighborhood_attention(q, k, v, 7),
    }
    if att.natten_available():
        methods["natten" + ("" if att.natten_fused_available() else " (Flex)")] = (
            lambda q, k, v: att.natten_neighborhood_attention(q, k, v, 7)
        )
    if device.type == "cuda":  # on the CPU torch compiles FlexAttention's forward only
        from bids_phydiff.model.flex_attention import flex_neighborhood_attention

        methods["flex (compiled, cached block mask)"] = lambda q, k, v: flex_neighborhood_attention(q, k, v, 7)
    return methods


def na_flops(batch: int, n: int, heads: int, head_dim: int, kernel: int = 7) -> float:
    """Exact FLOPs of one forward of 2-D neighborhood attention on an ``n x n`` grid: QK^T and PV, each
    2 * tokens * k^2 * D per head, with k the kernel (the whole axis where it is shorter). The backward has
    twice as many (dQ, dK, dV, dP)."""
    k = min(kernel, n)
    return 4.0 * batch * heads * n * n * k * k * head_dim


def bench_attention(
    device: torch.device, dtype: torch.dtype, repeats: int, sizes: list[int], batch: int = 4, heads: int = 4,
    head_dim: int = 32,
) -> list[dict]:
    rows = []
    for n in sizes:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(batch, n, n, heads, head_dim, generator=g, device=device, dtype=dtype)
                   for _ in range(3))
        flops = na_flops(batch, n, heads, head_dim)
        dense_fb = None
        for name, fn in attention_methods(device).items():
            slow_natten = name.startswith("natten") and device.type == "cpu"
            reps = 1 if slow_natten else repeats
            row = {"tokens": f"{n}x{n}", "batch": batch, "heads": heads, "head_dim": head_dim, "method": name}

            def forward():
                with torch.no_grad():
                    fn(q, k, v)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            row["forward_ms"] = 1e3 * min(_time(forward, device, reps, warmup=0 if slow_natten else 1))
            if slow_natten:
                row["forward_backward_ms"] = None
                row["note"] = "NATTEN's CPU backend has no backward"
            else:
                qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))

                def forward_backward():
                    fn(qg, kg, vg).sum().backward()

                row["forward_backward_ms"] = 1e3 * min(_time(forward_backward, device, reps))
            if device.type == "cuda":
                row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            row["na_tflops_forward"] = flops / (row["forward_ms"] * 1e-3) / 1e12
            if row["forward_backward_ms"]:
                row["na_tflops_forward_backward"] = 3 * flops / (row["forward_backward_ms"] * 1e-3) / 1e12
            if name == "dense masked SDPA":
                dense_fb = row["forward_backward_ms"]
            if dense_fb and row["forward_backward_ms"]:
                row["speedup_vs_dense_fb"] = dense_fb / row["forward_backward_ms"]
            rows.append(row)
            print(f"  attention {row['tokens']:>6} {name:<32} fwd {row['forward_ms']:9.2f} ms"
                  f"  fwd+bwd {row['forward_backward_ms'] or float('nan'):9.2f} ms", flush=True)
    return rows


# ---------------------------------------------------------------------------------------- training step


def register_cpu_attention_flops() -> None:
    """torch's FLOP counter knows the CUDA SDPA kernels but not the CPU flash kernel; count it the same way."""
    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry:
        return

    def forward(q, k, v, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(q, k, v)

    def backward(grad, q, k, v, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_backward_flop_count(grad, q, k, v)

    flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)(forward)
    flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)(backward)


def make_batch(batch: int, size: int, device: torch.device) -> DiffusionBatch:
    g = torch.Generator().manual_seed(0)
    image = lambda: (torch.rand(batch, 1, size, size, generator=g) * 2 - 1).to(device)  # noqa: E731
    return DiffusionBatch(
        target=image(),
        b0=image(),
        bval=torch.full((batch,), 2000.0).to(device),
        bvec=F.normalize(torch.randn(batch, 3, generator=g), dim=-1).to(device),
        slice_pos=torch.rand(batch, generator=g).to(device),
        adc=(torch.rand(batch, 1, size, size, generator=g) * 3e-3).to(device),
    )


def bench_step(
    name: str, device: torch.device, precision: str, repeats: int, compile_model: bool, batch_size: int
) -> dict:
    torch.manual_seed(0)
    model = PhyDiff(preset(name).replace(adapter=None)).to(device)
    size = PRESET_IMAGE_SIZES[name]
    batch = make_batch(batch_size, size, device)
    optimiser = torch.optim.AdamW(model.trainable_parameters("backbone"), lr=5e-4, weight_decay=1e-4, betas=(0.9, 0.95))
    g = torch.Generator(device=device).manual_seed(1)
    t = torch.randint(0, 1000, (batch_size,), generator=g, device=device)
    noise = torch.randn(batch_size, 1, size, size, generator=g, device=device)
    loss_fn = torch.compile(model.loss) if compile_model else model.loss

    def step():
        with autocast(device, precision):
            loss = loss_fn(batch, t=t, noise=noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    start = time.perf_counter()
    step()
    _sync(device)
    first_s = time.perf_counter() - start
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(device, precision):
            loss = model.loss(batch, t=t, noise=noise)
        loss.backward()
    optimiser.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    times = _time(step, device, repeats)
    best, median = min(times), statistics.median(times)
    row = {
        "preset": name,
        "image": f"{size}x{size}",
        "batch": batch_size,
        "parameters": model.parameter_count("backbone"),
        "compiled": compile_model,
        "first_step_s": first_s,
        "step_ms": 1e3 * best,
        "step_ms_median": 1e3 * median,
        "samples_per_s": batch_size / best,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / best / 1e9,
    }
    print(f"  step {name:<6} B={batch_size:<3} {size}x{size}  {row['step_ms']:9.1f} ms  "
          f"{row['gflop_per_step']:7.2f} GFLOP  {row['achieved_gflops']:7.1f} GFLOP/s", flush=True)
    return row


# ---------------------------------------------------------------------------------------- synthesis

HCP_VOLUMES, HCP_SLICES = 270, 110
"""One subject's HCP-like scheme: what the synthesis goal of issue 15 is stated for."""


def bench_synthesis(name: str, device: torch.device, precision: str, batch_size: int, steps: int = 50,
                    strength: float = 0.8, shifts: int = 2) -> dict:
    """One ``model.sample`` call (DDIM ``steps`` from SDEdit ``strength``, ``shifts`` passes per step: 2, the
    most a trained bundle chooses) on ``batch_size`` slices at the preset's size, random weights; the time
    per slice and what a 270-volume x 110-slice scheme would take."""
    torch.manual_seed(0)
    model = PhyDiff(preset(name).replace(adapter=None)).to(device).eval()
    size = PRESET_IMAGE_SIZES[name]
    batch = make_batch(batch_size, size, device)
    sampler = SamplerConfig(method="ddim", steps=steps, start="sdedit", strength=strength, shifts=shifts,
                            progress=False)

    def call():
        model.sample(batch.b0, batch.bval, batch.bvec, batch.slice_pos, batch.adc, sampler=sampler, seed=0,
                     precision=precision)

    start = time.perf_counter()
    call()  # warm-up (and, on CUDA, the kernels' first launch)
    _sync(device)
    first_s = time.perf_counter() - start
    best = min(_time(call, device, 2, warmup=0))
    per_slice = best / batch_size
    scheme_s = per_slice * HCP_VOLUMES * HCP_SLICES
    row = {"preset": name, "image": f"{size}x{size}", "batch": batch_size, "sampler": f"ddim-{steps} sdedit {strength} x{shifts} passes",
           "first_call_s": first_s, "call_s": best, "seconds_per_slice": per_slice,
           "seconds_per_volume_110_slices": per_slice * HCP_SLICES, "hcp_scheme_s": scheme_s}
    print(f"  synthesis {name} B={batch_size} {size}x{size}: {best:.2f} s per call, {per_slice * 1e3:.1f} ms per "
          f"slice, {HCP_VOLUMES} x {HCP_SLICES} scheme {scheme_s / 60:.1f} min", flush=True)
    return row


# ---------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    m = result["machine"]
    memory = bool(result["attention"]) and "peak_memory_mib" in result["attention"][0]
    first = result["attention"][0] if result["attention"] else {}
    lines = [
        f"Machine: {m['device_name']}, {m['threads']} thread(s), torch {m['torch']}, Python {m['python']}; "
        f"load average before/after the run {m['load_average']} / {m['load_average_after']}"
        f"{' (CONTENDED: matmul peak fell during the run)' if m['contended'] else ''}. "
        f"Command: `{result['command']}`.",
        "",
        f"Matrix-multiply peak ({result['peak']['dtype']}): {result['peak']['gflops']:.1f} GFLOP/s before the "
        f"benchmarks, {m['peak_after_gflops']:.1f} after; '% of peak' uses the higher.",
        "",
        f"Attention: kernel 7, batch {first.get('batch', '-')}, {first.get('heads', '-')} heads, head dim "
        f"{first.get('head_dim', '-')}; TFLOP/s from the exact neighborhood-attention FLOPs (`na_flops`).",
        "",
        "| tokens | method | forward ms | forward+backward ms | fwd+bwd speed-up vs dense | NA TFLOP/s fwd / fwd+bwd |"
        + (" peak MiB |" * memory),
        "|---|---|---|---|---|---|" + ("---|" * memory),
    ]
    for r in result["attention"]:
        fb = "n/a (no CPU backward)" if r["forward_backward_ms"] is None else f"{r['forward_backward_ms']:.2f}"
        speed = f"{r['speedup_vs_dense_fb']:.2f}x" if r.get("speedup_vs_dense_fb") else "-"
        mem = f" {r['peak_memory_mib']:.0f} |" if "peak_memory_mib" in r else ""
        tflops = f"{r['na_tflops_forward']:.3g} / " + (f"{r['na_tflops_forward_backward']:.3g}"
                                                        if r.get("na_tflops_forward_backward") else "-")
        lines.append(f"| {r['tokens']} | {r['method']} | {r['forward_ms']:.2f} | {fb} | {speed} | {tflops} |{mem}")
    lines += [
        "",
        "| preset | image | batch | params | compiled | step ms | samples/s | GFLOP/step | GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["steps"]:
        lines.append(
            f"| {r['preset']} | {r['image']} | {r['batch']} | {r['parameters'] / 1e6:.2f} M | "
            f"{'yes' if r['compiled'] else 'no'} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} | "
            f"{r['gflop_per_step']:.2f} | {r['achieved_gflops']:.1f} | {100 * r['fraction_of_peak']:.0f}% |"
        )
    if result.get("synthesis"):
        lines += ["", "| preset | image | slices per call | sampler | s per call | ms per slice | s per volume "
                      f"({HCP_SLICES} slices) | {HCP_VOLUMES}-volume scheme, min |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in result["synthesis"]:
            lines.append(f"| {r['preset']} | {r['image']} | {r['batch']} | {r['sampler']} | {r['call_s']:.2f} | "
                         f"{1e3 * r['seconds_per_slice']:.1f} | {r['seconds_per_volume_110_slices']:.2f} | "
                         f"{r['hcp_scheme_s'] / 60:.1f} |")
    goals = result["goals"]
    lines += [
        "",
        f"Goals: torch backend fwd+bwd at 64x64 tokens {goals['attention_speedup_64']:.2f}x dense "
        f"(goal >= 2x: {'met' if goals['attention_goal_met'] else 'NOT met'}); best backbone step "
        f"{100 * goals['best_fraction_of_peak']:.0f}% of peak (goal >= 40%: "
        f"{'met' if goals['step_goal_met'] else 'NOT met'}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch", default="", help="batch sizes, e.g. tiny=32,small=16 (default per device)")
    parser.add_argument("--sizes", default="16,32,64", help="attention grid sizes (tokens per side)")
    parser.add_argument("--attention-batch", type=int, default=4)
    parser.add_argument("--synthesis-batch", type=int, default=0,
                        help="also time DDIM-50 synthesis of this many slices per preset (default 0: not)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--head-dim", type=int, default=32, help="attention head dimension (default 32)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd training steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{cpu_name()} ({os.cpu_count()} cores)"
    command = "python benchmarks/bench_model.py " + " ".join(
        f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')} {v if v != '' else chr(34) * 2}"
        for k, v in vars(args).items()
        if v not in (None, False) and k != "output"
    )
    machine = {
        "device_name": device_name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "natten": att.natten_available(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"# {device_name}, {machine['threads']} threads, torch {torch.__version__}", flush=True)
    register_cpu_attention_flops()
    peak = matmul_peak(device, dtype, args.repeats)
    print(f"  matmul peak {peak['gflops']:.1f} GFLOP/s ({peak['dtype']})", flush=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    attention = bench_attention(device, dtype, args.repeats, sizes, args.attention_batch, args.heads, args.head_dim)
    batches = dict(BATCH_SIZES["cuda" if device.type == "cuda" else "cpu"])
    batches.update({k: int(v) for k, v in (item.split("=") for item in args.batch.split(",") if item)})
    steps = []
    for name in [p for p in args.presets.split(",") if p]:
        steps.append(bench_step(name, device, args.precision, args.repeats, False, batches[name]))
        if args.compile:
            steps.append(bench_step(name, device, args.precision, args.repeats, True, batches[name]))
    synthesis = [bench_synthesis(name, device, args.precision, args.synthesis_batch)
                 for name in [p for p in args.presets.split(",") if p]] if args.synthesis_batch else []
    # the peak again: a machine shared with other work shows it here, and the run is flagged
    peak_after = matmul_peak(device, dtype, args.repeats)
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    machine["peak_after_gflops"] = peak_after["gflops"]
    machine["contended"] = peak_after["gflops"] < 0.8 * peak["gflops"]
    if machine["contended"]:
        print(f"  WARNING: matmul peak fell from {peak['gflops']:.1f} to {peak_after['gflops']:.1f} GFLOP/s during "
              "the run: other work shared the machine; timings are unreliable", flush=True)
    reference = max(peak["gflops"], peak_after["gflops"])  # the higher one: the conservative fraction
    peak["reference_gflops"] = reference
    for r in steps:
        r["fraction_of_peak"] = r["achieved_gflops"] / reference
    at64 = [r for r in attention if r["tokens"] == "64x64" and r["method"] == "torch backend"]
    speedup = at64[0].get("speedup_vs_dense_fb", 0.0) if at64 else 0.0
    best = max((r["fraction_of_peak"] for r in steps), default=0.0)
    result = {
        "command": command,
        "machine": machine,
        "peak": peak,
        "attention": attention,
        "steps": steps,
        "synthesis": synthesis,
        "goals": {
            "attention_speedup_64": speedup,
            "attention_goal_met": speedup >= 2.0,
            "best_fraction_of_peak": best,
            "step_goal_met": best >= 0.4,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()

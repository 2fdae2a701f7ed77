#!/usr/bin/env bash
# The GPU check in one command, for a CUDA machine with this repository checked out and a python3 that has
# torch with CUDA (no project install needed: the model needs torch, numpy, safetensors, tqdm and PyYAML).
#
#   bash benchmarks/gpu_check.sh            # about 6-8 minutes on one H100/H200
#
# Wheels of packages the machine lacks can lie in .whl/ at the repository root (installed into a scratch
# folder first). Steps, each under its own time limit so the whole stays inside 8 minutes:
#   env        torch / CUDA / GPU / natten (libnatten?) versions
#   tests      the CUDA tests of the model (attention backends against the dense reference with gradients,
#              bf16, the device rules) and of the synthesis' automatic batch (needs nibabel: .whl/)
#   attention  bench_model.py: attention op [16, n, n, 4, 64], n = 32, 64 (SDPA with and without
#              the mask, halo, flex, natten),
#              the paper preset's training step at 256x256, batch 32, bf16, eager, and its DDIM-50 synthesis
#              of 64 slices per call (seconds per volume; a 270-volume x 110-slice scheme, goal < 5 min)
#   compile    the small preset's step eager and with torch.compile, recompilations logged (TORCH_LOGS=recompiles)
# Logs and JSON go to $RESULTS (default benchmarks/results/), named gpu_*; copy the tables into
# docs/benchmarks.md with the GPU model, the versions and this command.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-$REPO/benchmarks/results}
mkdir -p "$RESULTS"
cd "$REPO" || exit 2
if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site "$REPO"/.whl/*.whl || exit 2
    export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

failed=0
step() {  # step NAME SECONDS COMMAND...: run under a time limit, log to $RESULTS/gpu_NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$RESULTS/gpu_$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc, $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=1
}

step env 60 "$PY" -c '
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.get_device_name(),
      "capability", torch.cuda.get_device_capability())
try:
    import natten
    print("natten", natten.__version__, "HAS_LIBNATTEN", getattr(natten, "HAS_LIBNATTEN", None))
except Exception as exc:
    print("natten not importable:", exc)
'
[ "$failed" -eq 0 ] || { echo "no usable CUDA device: nothing else run"; exit 1; }
tests=(tests/test_model_attention.py tests/test_model_device.py tests/test_model_phydiff.py)
if "$PY" -c "import nibabel, scipy" 2> /dev/null; then
    tests+=(tests/test_synth_volume.py)  # the synthesis' automatic GPU batch
else
    echo "nibabel or scipy missing (put their wheels into .whl/): tests/test_synth_volume.py not run"
fi
step tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs "${tests[@]}" -k "cuda or flex or bf16"
step attention 150 "$PY" benchmarks/bench_model.py --device cuda --precision bf16 --presets paper \
    --batch paper=32 --sizes 32,64 --attention-batch 16 --heads 4 --head-dim 64 --repeats 5 \
    --synthesis-batch 64 --output "$RESULTS/gpu_model.json"
# the small preset: compiling the whole paper model's step did not finish within 10 minutes (docs/benchmarks.md)
TORCH_LOGS=recompiles step compile 180 "$PY" benchmarks/bench_model.py --device cuda --precision bf16 \
    --presets small --batch small=64 --sizes "" --repeats 5 --compile --output "$RESULTS/gpu_model_compile.json"
echo "results in $RESULTS (gpu_*.log, gpu_model*.json)"
exit $failed

#!/usr/bin/env bash
# The GPU check of TimeMix's kernels, one command on one CUDA GPU (under 8 minutes on an H100):
#   bash tools/gpu_check.sh [OUT_DIR]        (default OUT_DIR: assets/benchmark_training_gpu)
# 1. installs requirements-gpu.txt if fla-core is missing: from wheels in .whl/ first (no network needed:
#    pip download fla-core==0.6.0 einops==0.8.2 --no-deps -d .whl), then from the index; without it the check
#    still runs everything but the fla parts, and says so;
# 2. the CUDA tests (pytest -m cuda): kernel='fla' against kernel='torch', forward and backward, x051a and
#    x070, float32 and bf16;
# 3. the training benchmark, bf16, 6 x 384, T = 1024 and 4096, 16,384 tokens a step, for gpt, rwkv (x051a),
#    rwkv7 (x070) and microrwkv (the default layout): eager, torch.compile'd, and eager with kernel='fla'.
# Everything printed goes to OUT_DIR (environment.txt, tests.txt, eager/compiled/fla .txt and .json).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-assets/benchmark_training_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA GPU visible to torch ($(python -c 'import torch; print(torch.__version__)'))" >&2
    exit 1
fi

has_fla() { python -c "import fla.ops.rwkv7, fla.ops.simple_gla" >/dev/null 2>&1; }
if ! has_fla; then
    echo "fla-core is not installed: installing requirements-gpu.txt"
    [ -d .whl ] && pip install -q --no-index --find-links .whl -r requirements-gpu.txt \
        || { [ -d .whl ] && pip install -q --no-index --find-links .whl --no-deps fla-core einops; } \
        || pip install -q --timeout 10 --retries 0 -r requirements-gpu.txt
fi
if has_fla; then FLA=1; else FLA=0; echo "FLA MISSING: fla-core could not be installed; the fla tests and the fla benchmark are skipped"; fi

{
    echo "$ nvidia-smi"; nvidia-smi
    echo; echo "$ python -c 'import torch, ...'"
    python - <<'PY'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| GPU", torch.cuda.get_device_name(0))
for pkg in ("triton", "fla-core", "einops"):
    try:
        print(pkg, md.version(pkg))
    except md.PackageNotFoundError:
        print(pkg, "not installed")
PY
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

echo; echo "== CUDA tests"
timeout 150 python -m pytest -m cuda tests/test_model_fla.py -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"

BENCH=(python benchmark_training.py --models gpt,rwkv,rwkv7,microrwkv --n_layer 6 --n_embd 384 --n_head 6
       --seq_lens 1024 4096 --tokens_per_step 16384 --device cuda --dtype bfloat16)
echo; echo "== training benchmark, eager"
timeout 100 "${BENCH[@]}" --steps 5 --repeats 3 --warmup 2 --out "$OUT/eager.txt"
if [ "$FLA" = 1 ]; then
    echo; echo "== training benchmark, kernel='fla'"
    timeout 120 "${BENCH[@]}" --steps 5 --repeats 3 --warmup 2 --kernel fla --out "$OUT/fla.txt"
else
    echo "FLA MISSING: no fla benchmark" | tee "$OUT/fla.txt"
fi
echo; echo "== training benchmark, torch.compile (the first warm-up step compiles)"
timeout 230 "${BENCH[@]}" --steps 3 --repeats 3 --warmup 1 --compile --out "$OUT/compiled.txt"
echo; echo "gpu check done: $OUT"

#!/usr/bin/env bash
# One command, under 10 minutes on one GPU: training img/s of the original DDPM CIFAR-10 UNet (ddpm-cifar10,
# 35.7M params) at batch 128 in fp32, bf16 and bf16 + channels_last + torch.compile (diffprune's trainer next to
# a bare diffusers + PyTorch loop, same process), plus DDIM-100 sampling img/s; prints a table with the device
# name and writes benchmarks/results/gpu_check.json.
#
#   scripts/gpu_check.sh            # on a GPU machine
#   scripts/gpu_check.sh --smoke    # tiny CPU setting (ddpm-tiny, a few steps) to check the script itself
#   scripts/gpu_check.sh --latent   # latent training img/s of DiT-S/2 and DiT-B/2 on 256x256 inputs (32x32x4
#                                   # latents), bf16, next to diffusers' DiTTransformer2DModel, and MDT masking
#                                   # (~2 min); --latent --smoke runs it on the CPU at 8x8 latents
#
# Budget on an H100-class GPU (estimate): 3 modes x 2 loops x 60 steps plus start-up and compilation ~4-6 min,
# DDIM-100 on 256 images ~0.5 min. Each mode runs in its own process (accelerate fixes precision per process).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/env.sh

if [[ "${1:-}" == "--offline" ]]; then
  # A bare GPU machine: only what was carried (.gpu-carry/ from scripts/gpu_carry.sh), every result under $OUT,
  # each part under its own time limit (about 8 minutes in all) so that a slow part costs only itself.
  # --offline --dry-run: the same parts at toy sizes on a CPU, to check the script itself.
  OUTDIR="${OUT:-benchmarks/results/gpu-offline}"; mkdir -p "$OUTDIR"
  LOG="$OUTDIR/log.txt"; : > "$LOG"
  if compgen -G ".gpu-carry/wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-deps --no-index --target /tmp/diffprune-carried .gpu-carry/wheels/*.whl >>"$LOG" 2>&1
    export PYTHONPATH="$PYTHONPATH:/tmp/diffprune-carried"
  fi
  if [[ "${2:-}" == "--dry-run" ]]; then
    M=(--preset ddpm-tiny --resolution 16 --batch 8 --precision no); T=(--preset ddpm-tiny --resolution 16
       --batch 8 --steps 4 --warmup 2 --repeats 1 --device cpu --threads 1 --sample-steps 2 --sample-n 4)
    D=(--preset dit-tiny --sample-size 8 --batch-size 4 --iters 1 --warmup 1 --repeats 1 --device cpu --threads 1)
    S=(--steps 4 --samples 8 --sample-steps 2 --data random); MODES=(fp32 fp32); LIMITS=(120 120 300 300 120 300)
  else
    M=(--preset ddpm-cifar10 --resolution 32 --batch 128 --precision bf16); T=(--preset ddpm-cifar10 --resolution 32
       --batch 128 --steps 40 --warmup 10 --repeats 1 --device cuda --sample-steps 100 --sample-n 256 --sample-bf16)
    D=(--preset dit-s-2 --sample-size 32 --batch-size 64 --iters 10 --warmup 3 --repeats 3 --device cuda --bf16)
    S=(--steps 2000 --samples 1000 --sample-steps 100 --channels-last --data .gpu-carry/fashion-mnist-30k.npz)
    MODES=(bf16 bf16-cl-compile); LIMITS=(60 50 90 150 50 150)
  fi
  part() {  # part NAME LIMIT COMMAND...: runs, logs, never stops the script
    local name=$1 limit=$2; shift 2
    echo "== $name ($(date -u +%T), limit ${limit}s): $*" >>"$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1 || echo "!! $name exited $?" >>"$LOG"
  }
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    "$PY" -c "import torch, diffusers; print('torch', torch.__version__, '| diffusers', diffusers.__version__)"; } >>"$LOG" 2>&1
  part syncs "${LIMITS[0]}" "$PY" benchmarks/gpu_offline.py syncs "${M[@]}" --steps 10 --out "$OUTDIR/syncs.json"
  part breakdown "${LIMITS[1]}" "$PY" benchmarks/gpu_offline.py breakdown "${M[@]}" --steps 10 --out "$OUTDIR/breakdown.json"
  part train-eager "${LIMITS[2]}" "$PY" benchmarks/bench_train.py "${T[@]}" --modes "${MODES[0]}" --out "$OUTDIR/train_eager.json"
  part train-compiled "${LIMITS[3]}" "$PY" benchmarks/bench_train.py "${T[@]}" --modes "${MODES[1]}" --no-sampling \
    --out "$OUTDIR/train_compiled.json"
  part dit "${LIMITS[4]}" "$PY" benchmarks/bench_dit.py "${D[@]}" --out "$OUTDIR/dit.json"
  part short-run "${LIMITS[5]}" "$PY" benchmarks/gpu_offline.py short-run "${M[@]}" "${S[@]}" --out "$OUTDIR"
  echo "== done $(date -u +%T)" >>"$LOG"
  tail -n 40 "$LOG"
  exit 0
fi

if [[ "${1:-}" == "--latent" ]]; then
  if [[ "${2:-}" == "--smoke" ]]; then
    LARGS=(--sample-size 8 --batch-size 4 --iters 1 --warmup 1 --repeats 1 --device cpu --threads 1)
    PRESETS=(dit-s-2); SUFFIX=_smoke
  else
    "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
    LARGS=(--sample-size 32 --batch-size 64 --iters 10 --warmup 3 --repeats 3 --device cuda --bf16)
    PRESETS=(dit-s-2 dit-b-2); SUFFIX=
  fi
  for preset in "${PRESETS[@]}"; do
    timeout 280 "$PY" benchmarks/bench_dit.py --preset "$preset" "${LARGS[@]}" \
      --out "benchmarks/results/gpu_latent_${preset}${SUFFIX}.json"
  done
  exit 0
fi

if [[ "${1:-}" == "--smoke" ]]; then
  OUT=benchmarks/results/gpu_check_smoke.json
  ARGS=(--preset ddpm-tiny --resolution 16 --channels 3 --batch 8 --steps 4 --warmup 2 --repeats 1
        --device cpu --threads 1 --sample-steps 5 --sample-n 4)
  LIMIT=900
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PY (use --smoke to test the script on a CPU)" >&2
    exit 2
  fi
  "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
  OUT=benchmarks/results/gpu_check.json
  ARGS=(--preset ddpm-cifar10 --resolution 32 --channels 3 --batch 128 --steps 50 --warmup 10 --repeats 1
        --device cuda --sample-steps 100 --sample-n 256)
  LIMIT=570
fi

timeout "$LIMIT" "$PY" benchmarks/bench_train.py "${ARGS[@]}" --modes fp32,bf16,bf16-cl-compile --out "$OUT"

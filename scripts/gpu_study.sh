#!/usr/bin/env bash
# The Fashion-MNIST quality study of docs/results.md at GPU scale, sized for <= 10 minutes on one H100:
# 32x32 (28 px padded), the 1.1M-parameter ddpm-small (1,112,801 parameters for grey images), 4 epochs at batch
# 128 in bf16, efficientnet-lite0 features at 224 px, full data vs random / gaussian / gaussian+dro at 10% and 30%, seeds 0 and 1; FID Inception on 1,000
# DDIM-50 samples per arm against 10,000 training images, plus the classifier Frechet distance.
#
#   scripts/gpu_study.sh             # on a GPU machine: runs/gpu-study/results.md and the report
#   scripts/gpu_study.sh --smoke     # 200 images, 3 arms, on the CPU: checks the script itself
#
# Budget (estimated from the CPU measurements, not yet measured on a GPU): training 2 x 1.3M images at ~5k img/s
# ~9 min is the bulk; lower train.epochs if the first arm's img/s says it will not fit.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/env.sh
RUNS="${RUNS_DIR:-runs}"

COMMON=(--set "runs_dir=$RUNS" --set data.resolution=32 --set data.resize=pad --set train.preset=ddpm-small
        --set train.ema_decay=0.999 --set reweight.proxy_preset=ddpm-tiny --set sample.steps=50)
if [[ "${1:-}" == "--smoke" ]]; then
  NAME=gpu-study-smoke
  ARGS=(--set data.limit=200 --set data.resolution=16 --set data.resize=resize --set train.preset=ddpm-tiny
        --set 'embed.options={size: 64}' --set train.epochs=1 --set train.batch_size=32
        --set reweight.steps=10 --set reweight.reference_steps=10 --set sample.num_samples=16 --set sample.steps=5
        --set evaluate.num_real=32 --set 'evaluate.metrics=[fid, classifier_fd]' --set evaluate.classifier.epochs=1
        --set evaluate.fid_floor=false --set evaluate.classwise=false)
  SEEDS=0; METHODS=random,gaussian+dro; RATIOS=0.3
  LIMIT=900
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_study: no CUDA device visible to $PY (use --smoke to test the script on a CPU)" >&2
    exit 2
  fi
  "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
  NAME=gpu-study
  ARGS=(--set 'embed.options={}' --set train.epochs=4 --set train.batch_size=128 --set train.mixed_precision=bf16
        --set train.lr=5.0e-4 --set reweight.steps=500 --set reweight.batch_size=128 --set reweight.reference_steps=3000
        --set sample.num_samples=1000 --set sample.batch_size=500 --set evaluate.num_real=10000
        --set evaluate.batch_size=250)
  SEEDS=0,1; METHODS=random,gaussian,gaussian+dro; RATIOS=0.1,0.3
  LIMIT=590
fi

start=$(date +%s)
timeout "$LIMIT" "$PY" -m diffprune.cli sweep configs/fashion-mnist.yaml --name "$NAME" --no-progress \
  --methods "$METHODS" --ratios "$RATIOS" --seeds "$SEEDS" "${COMMON[@]}" "${ARGS[@]}"
echo "gpu_study: $(( $(date +%s) - start )) s; table: $RUNS/$NAME/results.md"
cat "$RUNS/$NAME/results.md"

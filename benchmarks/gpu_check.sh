#!/usr/bin/env bash
# The GPU check: what one CUDA device does with this project, in at most 8 minutes, each row printed as measured.
#
#   bash benchmarks/gpu_check.sh            (from anywhere; uses .venv/bin/python when it exists, else python3)
#
#  1. guided sampling on the CIFAR-10 configs at batch 128: seconds per evaluation, per sample and images/s per
#     mode (fp32, TF32, bf16, bf16 + compile, bf16 classifier too) and per sampler at the evaluation count at which
#     it matched guided PC at 2 000 on digits (benchmarks/bench_sample_cost.py);
#  2. the fp32 / bf16 peaks and the fraction of them a guided PC step reaches (benchmarks/bench_sampling.py);
#  3. training steps/s at the configs' batch sizes: score model 128, classifier ('total' loss) 150
#     (benchmarks/bench_train.py: exact fp32, TF32 and bf16 autocast);
#  4. a one-GPU torchrun (NCCL) smoke run: 20 score updates of the digits config, then the folder is removed.
# Every part has its own time limit (the sum stays under 8 minutes); a part that fails or runs out prints one line
# and the next part runs. Without a CUDA device it says so and exits 0.
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON=python3
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device (torch.cuda.is_available() is False); nothing measured"
  exit 0
fi
started=$(date +%s)
"$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'

part() {  # seconds, title, command...
  local limit=$1 title=$2
  shift 2
  echo "== $title (at most ${limit} s; $(( $(date +%s) - started )) s so far)"
  timeout --signal=INT "$limit" "$@"
  local status=$?
  [ "$status" -eq 124 ] && echo "gpu_check.sh: '$title' ran past ${limit} s and was stopped"
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && echo "gpu_check.sh: '$title' failed with exit status $status"
  return 0
}

SAMPLERS=${GPU_CHECK_SAMPLERS:-"pc@2000 dpmpp_2m:eta=10@100 dpmpp_2m:eta=10@20"}
# shellcheck disable=SC2086
part 200 "1. guided sampling: cost per sample and images/s" \
  "$PYTHON" -u benchmarks/bench_sample_cost.py --device cuda --batch 128 --samplers $SAMPLERS \
  --out results/gpu_check
part 70 "2. peaks and the fraction a guided PC step reaches" \
  "$PYTHON" -u benchmarks/bench_sampling.py --device cuda --batch 128 --modes fp32 bf16 bf16+compile
part 60 "3a. score-model training steps/s (batch 128)" \
  "$PYTHON" -u benchmarks/bench_train.py --device cuda --batch 128 --only score --steps 5
part 50 "3b. classifier training steps/s ('total', batch 150)" \
  "$PYTHON" -u benchmarks/bench_train.py --device cuda --batch 150 --only classifier --steps 5
SMOKE=gpu_check_torchrun_$$
part 60 "4. one-GPU torchrun (NCCL) smoke run" \
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 main.py --config configs/digits/score.py \
  --model score --workdir "$SMOKE" --config.training.n_iters=20 --config.training.snapshot_freq=20 \
  --config.training.eval_freq=10 --config.device=cuda
rm -rf "results/$SMOKE"
echo "== done in $(( $(date +%s) - started )) s"

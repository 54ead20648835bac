#!/usr/bin/env bash
# The GPU measurements of issues 13 and 14, prepared to run in one call that ends inside 8 minutes.
#
#   benchmarks/prepare_gpu_carry.sh /path/to/NVlabs/stylegan3    # here, once: fills benchmarks/.carry (~40 MiB)
#   benchmarks/gpu_check.sh [--cpu-check] [STEP...]             # on the GPU machine (carry benchmarks/.carry)
#
# Steps run in the order of what they are worth, each under its own time cap and all under one deadline
# (BUDGET_S, default 460 s). A step the deadline leaves no time for is recorded as skipped, not started;
# name the skipped steps to run them in a second call. Every step writes its own JSON, so a step that
# fails or times out loses only itself. Estimates are for one H200 (none measured yet):
#   vs_nvlabs_stylegan2  ours vs NVlabs' train.py, StyleGAN2 128 px row: img/s, peak memory   ~150 s (14)
#   bench_eval           FID-50k end to end, study's StyleGAN2, random-weight Inception         ~90 s (13)
#   bench_metrics        FD-DINOv2 ViT-L/14 vs the Inception pass per 1000 images; FID-inf, k-NN  ~60 s (27)
#   bench_r3gan          R3GAN vs StyleGAN2 img/s at 128 px, batch 32, each model's full recipe ~80 s (26)
#   vs_nvlabs_stylegan3  StyleGAN3-T rows: batch-gpu 16 (NVlabs' 7.2 GB row), and 32 in one round ~250 s (14)
#   bench_attention      StyleSwin 128 px: masked vs split shifted windows, per SDPA kernel      ~60 s (14)
#   bench_preprocess     MTCNN + batched warps on 1000 CelebA JPEGs, today's path beside it      ~60 s (13)
#   gpu_smoke            every stage under dvc repro, profile gpu-smoke, each stage timed        ~250 s (13)
#   bench_train          the train.speed levers off and on (+ compile, CUDA graphs), four models ~160 s (14)
# --cpu-check runs the same steps here at toy sizes on CPU (the plumbing; the numbers mean nothing).
# Results: reports/bench/*_cuda.json (--cpu-check: /tmp/gpu_check_cpu), and on the device tool
# $OUT/gpu_check.tar.gz + $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=benchmarks/.carry
CPU_CHECK=0; [ "${1:-}" = "--cpu-check" ] && { CPU_CHECK=1; shift; }
ONLY=" $* "  # steps named on the command line; none: all
BUDGET_S=${BUDGET_S:-460}
RESULTS=${RESULTS:-reports/bench}
[ "$CPU_CHECK" = 1 ] && RESULTS=${CHECK_RESULTS:-/tmp/gpu_check_cpu}  # toy numbers never overwrite the real CPU figures
LOG=${OUT:-/tmp}/gpu_check.log
START=$(date +%s)
mkdir -p "$RESULTS"
: > "$LOG"
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1

if [ "$CPU_CHECK" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  DEV=cpu
  CAP_SCALE=4  # two CPU cores run the study-sized networks slowly
else
  PY=${PYTHON:-python3}
  DEV=cuda
  CAP_SCALE=1
  if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then  # the GPU image lacks dvc, facenet-pytorch, clean-fid, lpips
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$CARRY"/wheels/*.whl >>"$LOG" 2>&1 || { echo "error: wheel install failed (see $LOG)"; exit 1; }
    export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -1
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee -a "$LOG"

SUMMARY=()
step() {  # step NAME CAP_S COMMAND...: run under min(CAP_S, time left), record the outcome
  local name=$1 cap=$(( $2 * CAP_SCALE )); shift 2
  [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $name "* ]] || return 0
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped (${left}s left of ${BUDGET_S}s)" | tee -a "$LOG"; SUMMARY+=("\"$name\": \"skipped\""); return
  fi
  local limit=$(( cap < left ? cap : left )) t0=$(date +%s)
  echo "== $name (cap ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$? took=$(( $(date +%s) - t0 ))
  echo "== $name: exit $rc after ${took}s" | tee -a "$LOG"
  SUMMARY+=("\"$name\": {\"exit\": $rc, \"wall_s\": $took, \"cap_s\": $limit}")
}

NVLABS=(--nvlabs "$CARRY/stylegan3")
[ -f "$CARRY/stylegan3/train.py" ] || NVLABS=(--skip-nvlabs)
if [ "$CPU_CHECK" = 1 ]; then  # toy sizes: checks the plumbing, the numbers mean nothing
  NVLABS=(--skip-nvlabs)
  SG2=(--kimg 0.016 --warmup-kimg 0.008 --images 16 --batch 4); SG3=("${SG2[@]}")
  EVAL=(--images 16 --fid-images 32 --batch 16)
  PRE=(--images 24)
  SMOKE=(--tiny)
  TRAIN=(--profile demo --models stylegan2 --kimg 0.064 --warmup-kimg 0.032)
  ATT=(--profile demo --resolution 32 --batch 4 --steps 1 --warmup 1 --rounds 1)
  R3=(--sizes demo --kimg 0.032 --warmup-kimg 0.016)
  METRICS=(--images 8 --batch 4 --features 300)
else
  # NVlabs reports tick 0 after its first batch (compile, cudnn autotuning), then every whole kimg (--tick=1):
  # a warm-up of 0.5 kimg leaves out tick 0 and measures the ticks at 1, 2, 3 kimg (StyleGAN3: at 1 kimg)
  SG2=(--kimg 3 --warmup-kimg 0.5)
  SG3=(--kimg 1 --warmup-kimg 0.5)
  EVAL=(--network random --fid-images 50000)
  PRE=(--images 1000 --compare-today)
  SMOKE=()
  TRAIN=(--profile study --models stylegan2 stylegan3 styleswin pggan --kimg 0.5 --warmup-kimg 0.25 \
         --variants baseline levers levers+channels_last levers+compile levers+cudagraphs)
  ATT=(--profile study --resolution 128 --batch 32 --steps 10 --warmup 3 --rounds 1)
  R3=(--sizes study --study-resolution 128 --study-batch 32 --kimg 0.5 --warmup-kimg 0.25)
  METRICS=(--images 5000 --batch 250 --features 10000)
fi

step vs_nvlabs_stylegan2 180 $PY -m benchmarks.vs_nvlabs "${NVLABS[@]}" --device $DEV --rows stylegan2 "${SG2[@]}" \
  --out "$RESULTS/vs_nvlabs_stylegan2_$DEV.json"
step bench_eval 120 $PY -m benchmarks.bench_eval --device $DEV "${EVAL[@]}" --out "$RESULTS/eval_$DEV.json"
step bench_metrics 120 $PY -m benchmarks.bench_metrics --device $DEV "${METRICS[@]}" --out "$RESULTS/metrics_$DEV.json"
step bench_r3gan 120 $PY -m benchmarks.bench_r3gan --device $DEV "${R3[@]}" --out "$RESULTS/r3gan_vs_stylegan2_$DEV.json"
step vs_nvlabs_stylegan3 300 $PY -m benchmarks.vs_nvlabs "${NVLABS[@]}" --device $DEV \
  --rows stylegan3-t_batch-gpu-16 stylegan3-t_batch-32 "${SG3[@]}" --out "$RESULTS/vs_nvlabs_stylegan3_$DEV.json"
step bench_attention 90 $PY -m benchmarks.bench_attention --device $DEV "${ATT[@]}" --out "$RESULTS/attention_$DEV.json"
step bench_preprocess 90 $PY -m benchmarks.bench_preprocess --device $DEV "${PRE[@]}" \
  --folder "$CARRY/celeba_align" --partition "$CARRY/list_eval_partition.txt" --out "$RESULTS/preprocess_$DEV.json"
step gpu_smoke 300 $PY -m benchmarks.gpu_smoke --device $DEV "${SMOKE[@]}" --folder "$CARRY/celeba_align" \
  --out "$RESULTS/gpu_smoke_$DEV.json"
step bench_train 200 $PY -m benchmarks.bench_train --device $DEV "${TRAIN[@]}" --out "$RESULTS/train_$DEV.json"

{ printf '{"budget_s": %s, "wall_s": %s, "steps": {' "$BUDGET_S" $(( $(date +%s) - START ))
  (IFS=,; printf '%s' "${SUMMARY[*]}"); printf '}}\n'; } > "$RESULTS/gpu_check_$DEV.json"
cat "$RESULTS/gpu_check_$DEV.json" | tee -a "$LOG"
if [ -n "${OUT:-}" ]; then  # the device tool brings back at most 8 files: one archive and the log
  tar -czf "$OUT/gpu_check.tar.gz" "$RESULTS"/*_"$DEV".json 2>>"$LOG"
fi

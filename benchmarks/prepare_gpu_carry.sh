#!/usr/bin/env bash
# Fill benchmarks/.carry/ (git-ignored) with what benchmarks/gpu_check.sh needs on a GPU machine that
# reaches no package index and receives at most 64 MiB: a slice of CelebA, NVlabs' stylegan3 code, and
# wheels of the packages that machine's image lacks.
#
#   benchmarks/prepare_gpu_carry.sh [NVLABS]   # NVLABS: a local clone (or a bare git dir) of NVlabs/stylegan3
#
# NVlabs' code is copied from the path you give, into the ignored folder: it is never committed here.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=benchmarks/.carry
NVLABS=${1:-${NVLABS:-}}
IMAGES=${IMAGES:-1500}        # gpu_smoke keeps 1000 faces; MTCNN rejects a few per hundred
SHARED=${SHARED:-../shared}
PY=${PYTHON:-.venv/bin/python}  # the project's venv: its dvc/dvclive versions and their dependency closure
rm -rf "$CARRY" && mkdir -p "$CARRY/celeba_align" "$CARRY/wheels"
mapfile -t images < <(ls "$SHARED/faces/celeba_align" | sort)  # CelebA's order: the first N the partition lists
(cd "$SHARED/faces/celeba_align" && cp -t "$OLDPWD/$CARRY/celeba_align" "${images[@]:0:$IMAGES}")
cp "$SHARED/faces/list_eval_partition.txt" "$CARRY/"

if [ -n "$NVLABS" ]; then
  mkdir -p "$CARRY/stylegan3"
  if [ -d "$NVLABS/.git" ] || [ ! -f "$NVLABS/train.py" ]; then  # a clone or a bare git dir: its HEAD
    git --git-dir="$( [ -d "$NVLABS/.git" ] && echo "$NVLABS/.git" || echo "$NVLABS")" archive HEAD \
      | tar -x -C "$CARRY/stylegan3" --exclude='docs' --exclude='*.png' --exclude='*.jpg' --exclude='*.gif'
  else
    cp -r "$NVLABS"/. "$CARRY/stylegan3"
  fi
  test -f "$CARRY/stylegan3/train.py" || { echo "error: $NVLABS holds no NVlabs stylegan3 train.py" >&2; exit 1; }
fi

# dvc and dvclive with the dependencies this venv resolved for them, and the few others our stages import
# (without theirs: those would pull torch), less what the GPU image already holds (KINDS.md's list)
$PY benchmarks/carry_wheels.py "$CARRY/wheels"
du -sh "$CARRY" "$CARRY"/*
total=$(du -sm "$CARRY" | cut -f1)
[ "$total" -lt 58 ] || { echo "error: $CARRY is ${total} MiB; the device takes 64 MiB with the working tree" >&2; exit 1; }
echo "ready: run benchmarks/gpu_check.sh on the device with carry [\"$CARRY\"]"

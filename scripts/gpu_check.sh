#!/usr/bin/env bash
# One prepared run on a lent GPU (issue 14; results go to docs/benchmarks.md): the parity checks
# and timings of scripts/gpu_check.py at 300x512x512 and 512^3 (eager backbone, then compiled with
# a persistent cache), then, with --with-training, short runs of the three training stages with the
# full-size configs on a miniature phantom dataset (crops/s, steps/s, peak GPU memory).
#
# The GPU machine has no internet: what its image lacks (monai, nibabel, pydicom; transformers to
# match this checkout) travels as wheels in .whl/ (keep it out of git: echo /.whl/ >> .git/info/exclude).
#   bash scripts/gpu_check.sh --fetch-wheels        # here, with internet: fill .whl/ (~25 MB)
#   OUT=/tmp/gpu-out bash scripts/gpu_check.sh       # on the GPU machine (device run: carry .whl)
#   bash scripts/gpu_check.sh --dry-run              # anywhere: the same script on the CPU, tiny model
# Every step has its own time limit so one slow step cannot take the others with it; the whole
# run stays under 10 minutes (parity + eager timings <= 330 s, compiled timings <= 200 s).
set -uo pipefail
OUT=${OUT:-/tmp/neuroradix-gpu}
WORK=${WORK:-/tmp/neuroradix-gpu-work}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
DRY=""; TRAIN=""
for arg in "$@"; do
    case "$arg" in
        --fetch-wheels)
            mkdir -p "$WHEELS"
            exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
                monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2 transformers==5.24.0 ;;
        --dry-run) DRY="--dry-run" ;;
        --with-training) TRAIN=1 ;;
        *) echo "unknown argument $arg" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT" "$WORK"
if [ -z "$DRY" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD/inference:$PWD/training${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
train() { timeout "$1" "$PY" -m neuroradix_train.cli "${@:2}"; }

if [ -z "$DRY" ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, monai, transformers; print('torch', torch.__version__, 'monai', monai.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

# 1. parity checks + timings (eager backbone), then the compiled backbone and decode step
limit=330; [ -z "$DRY" ] || limit=900  # a shared 2-core CPU can take several minutes for the dry run
timeout "$limit" "$PY" scripts/gpu_check.py $DRY --out "$OUT/eager" 2>&1 | tee "$OUT/gpu-check-eager.log"
status=${PIPESTATUS[0]}
if [ -z "$DRY" ]; then
    timeout 200 "$PY" scripts/gpu_check.py --compile --skip-parity --cache-dir "$WORK/inductor" --out "$OUT/compiled" \
        2>&1 | tee "$OUT/gpu-check-compiled.log"
fi
[ -n "$TRAIN" ] || exit "$status"

# 2. training, full-size configs, a miniature phantom dataset at 1.5 mm (200x192x224 voxels)
timeout 120 "$PY" -c "
from pathlib import Path
from neuroradix_train.data.phantoms import build_miniature_ctrate
build_miniature_ctrate(Path('$WORK/data'), n_train=8, n_valid=4, real_ct_dir=None, seed=0)
" || exit 1
train 200 train-seg --set data.root="$WORK/data" --set train.out_dir="$WORK/stage1" --set train.epochs=100 \
    --set data.max_valid_scans=1 --set train.val_every_epochs=100 --set train.ckpt_every_steps=1000 \
    --set train.warmup_steps=5 --max-steps 40 | tee "$OUT/stage1.json"
train 120 export-embeddings --set data.root="$WORK/data" --set export.backbone="$WORK/stage1" \
    --set export.out_dir="$WORK/embeddings" | tee "$OUT/stage2.json"
train 180 train-head --set data.embeddings="$WORK/embeddings" --set train.out_dir="$WORK/head" \
    --set train.batch_size=4 --set train.epochs=100 --set train.warmup_steps=5 --set train.val_every_epochs=100 \
    --set train.max_new_tokens=64 --max-steps 40 | tee "$OUT/stage3.json"
cp "$WORK/stage1/steps.jsonl" "$OUT/stage1-steps.jsonl" 2>/dev/null
cp "$WORK/head/steps.jsonl" "$OUT/stage3-steps.jsonl" 2>/dev/null
"$PY" - "$WORK" <<'EOF' | tee "$OUT/training-summary.txt"
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for stage, unit in (("stage1", "crops"), ("head", None)):
    path = work / stage / "steps.jsonl"
    if not path.is_file():
        print(stage, "no steps written")
        continue
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    timed = rows[5:]  # the first steps include cuDNN autotuning and the DataLoader start
    dt = timed[-1]["seconds"] - rows[4]["seconds"] if len(rows) > 5 else float("nan")
    rate = (sum(r[unit] for r in timed) / dt) if unit else len(timed) / dt
    print(f"{stage}: {len(rows)} steps, {'crops' if unit else 'steps'}/s over steps 6-{len(rows)}: {rate:.2f}, "
          f"peak GPU memory {max(r.get('gpu_peak_gb') or 0 for r in rows):.1f} GB")
EOF

#!/usr/bin/env bash
# One prepared run on a lent GPU (see docs/benchmarks.md): the full-size model benchmark at
# 300x512x512 and 512^3, then short runs of the three training stages with the full-size configs
# on a miniature phantom dataset (crops/s, steps/s, peak GPU memory).
#
# Usage (repo root, CUDA torch installed, monai/nibabel/pydicom importable):
#   OUT=/tmp/gpu-out bash scripts/gpu_check.sh
# Every step has its own time limit so one slow step cannot take the others with it.
set -uo pipefail
OUT=${OUT:-/tmp/neuroradix-gpu}
WORK=${WORK:-/tmp/neuroradix-gpu-work}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD/inference:$PWD/training${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
train() { timeout "$1" "$PY" -m neuroradix_train.cli "${@:2}"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

# 1. inference: segmentation + embeddings, head + report, at 300x512x512 and 512^3
for shape in "300 512 512" "512 512 512"; do
    tag=${shape// /x}
    timeout 180 "$PY" scripts/bench_models.py --device cuda --shape $shape --sw-batch 4 --threads 8 \
        --json "$OUT/bench-$tag.json" | tee "$OUT/bench-$tag.md"
done

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

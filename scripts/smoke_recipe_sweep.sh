#!/usr/bin/env bash
# The sweep that chose training/neuroradix_train/configs/segmentation-tiny.yaml (docs/training.md): variants of the tiny
# stage-1 recipe trained side by side on the smoke's phantoms (40 train / 20 valid, 12 used for
# training, 6 for validation every 5 epochs), fp32 like the CPU smoke. Meant for a GPU: each
# variant takes about a minute there and 20 minutes on a 2-core CPU.
#
#   bash scripts/smoke_recipe_sweep.sh [work-dir]     # prints Dice per phantom organ per validation
set -uo pipefail
W=${1:-/tmp/neuroradix-sweep}
PY=${PYTHON:-python3}
mkdir -p "$W"
export PYTHONPATH="$PWD/inference:$PWD/training${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "
from pathlib import Path
from neuroradix_train.data.phantoms import build_miniature_ctrate
build_miniature_ctrate(Path('$W/data'), n_train=40, n_valid=20, real_ct_dir=None, seed=0)" || exit 1
common=(--config training/neuroradix_train/configs/segmentation-tiny.yaml --set data.root="$W/data" --set data.max_train_scans=12
        --set data.max_valid_scans=6 --set train.val_every_epochs=5 --set train.amp=false --set train.threads=3)
run() { name=$1; shift; timeout 900 "$PY" -m neuroradix_train.cli train-seg "${common[@]}" --set train.out_dir="$W/$name" \
        --set data.cache_dir="$W/cache-$name" "$@" > "$W/$name.log" 2>&1; }
S6="model.preprocess.target_spacing=[6,6,6]"
run 6mm-present-lr2e-3 --set "$S6" --set train.epochs=50 --set train.dice_classes=present --set train.lr=2e-3 &
run 6mm-present-lr4e-3 --set "$S6" --set train.epochs=50 --set train.dice_classes=present --set train.lr=4e-3 &
run 6mm-all-lr2e-3 --set "$S6" --set train.epochs=50 --set train.dice_classes=all --set train.lr=2e-3 &
run 4mm-present-lr2e-3 --set train.epochs=50 --set train.dice_classes=present --set train.lr=2e-3 &
run 4mm-present-lr4e-3 --set train.epochs=50 --set train.dice_classes=present --set train.lr=4e-3 &
run 4mm-present-lr6e-3 --set train.epochs=50 --set train.dice_classes=present --set train.lr=6e-3 &
run 4mm-all-lr4e-3 --set train.epochs=50 --set train.dice_classes=all --set train.lr=4e-3 &
run 4mm-present-lr4e-3-batch1 --set train.epochs=34 --set train.dice_classes=present --set train.lr=4e-3 --set train.batch_size=1 &
wait
"$PY" - "$W" <<'PY'
import json, sys
from pathlib import Path

from neuroradix_train.smoke import _organ_labels

labels = _organ_labels()
for run in sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "epochs.jsonl").is_file()):
    print(f"== {run.name}")
    for line in (run / "epochs.jsonl").read_text().splitlines():
        r = json.loads(line)
        dice = {name: round(r.get(f"dice_{label}") or 0.0, 3) for name, label in labels.items()}
        print(f"epoch {r['epoch']:3d} step {r['step']:4d} loss {r['train_loss']:.3f} {dice}")
PY

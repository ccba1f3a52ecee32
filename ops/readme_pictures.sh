#!/usr/bin/env bash
# Regenerate the README's pictures from a finished demo (run `bash ops/demo.sh` first):
#   ops/pictures/demo-samples.png  the edge-texture stage's last validation grid
#                                  (rows: masked input | edges | output | ground truth)
#   ops/pictures/demo-compare.png  compare.py's PSNR/SSIM-vs-hole-ratio plot: each method's
#                                  newest evaluation (the model, the pull-push fill it starts
#                                  from, mean fill, Telea) and the paper's Table 1 (dashed)
# Reads the demo's store ./mlflow.db (experiment dina-demo); writes the compare outputs under
# outputs/demo/compare. The PNGs are palette-quantised to stay small in git.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
URI="sqlite:///$PWD/mlflow.db"
grid=$(ls runs/demo/edge-texture/tracking/samples-*.png 2>/dev/null | sort | tail -n 1 || true)
[ -n "$grid" ] || { echo "readme_pictures.sh: no runs/demo/edge-texture/tracking/samples-*.png; run bash ops/demo.sh first" >&2; exit 2; }

"$PY" pipeline/evaluate.py --method telea --images shards/sample/test --masks shards/sample/masks \
    --image-size 64 --out outputs/demo/telea --tracking-uri "$URI" --experiment dina-demo \
    --run-name eval-telea-demo >/dev/null
# each method's newest finished evaluation (a re-run demo leaves older ones in the store)
runs=$("$PY" - "$URI" <<'PY'
import sys
from mlflow.tracking import MlflowClient

client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("dina-demo")
newest = {}
for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"],
                              filter_string="tags.`dina.kind` = 'evaluation' and "
                                            "attributes.status = 'FINISHED'"):
    newest[run.data.tags.get("dina.method", run.info.run_name)] = run.info.run_id
print(" ".join(newest.values()))
PY
)
[ -n "$runs" ] || { echo "readme_pictures.sh: no finished evaluation runs in dina-demo; run bash ops/demo.sh first" >&2; exit 2; }
# shellcheck disable=SC2086  # one argument per run id
"$PY" pipeline/compare.py $runs --reference configs/reference/paper_paris.yaml \
    --out outputs/demo/compare --tracking-uri "$URI"

mkdir -p ops/pictures
"$PY" - "$grid" outputs/demo/compare/plot.png <<'PY'
import sys
from PIL import Image

def save(src, dst, width):
    with Image.open(src) as img:
        img = img.convert("RGB")
        if img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        img.quantize(colors=128, dither=Image.Dither.NONE).save(dst, optimize=True)
        print(f"wrote {dst} ({img.width}x{img.height})")

save(sys.argv[1], "ops/pictures/demo-samples.png", 256)
save(sys.argv[2], "ops/pictures/demo-compare.png", 900)
PY
du -ch ops/pictures/*.png | tail -n 1

#!/usr/bin/env bash
# The main job on embedded defaults, CPU only, from a fresh clone:
#   set up .venv -> shard the bundled sample photos -> train the edge stage -> the texture stage
#   (G2 on the true edges) -> the edge-texture stage (G2 goes on, on the edges G1 draws) ->
#   evaluate per mask bucket -> print where to look in MLflow.
# Everything lands in the working directory: shards/sample, runs/demo, mlflow.db, outputs/demo.
#   DEMO_STEPS  optimizer steps per stage (default: configs/experiment/demo.yaml)
# A re-run continues from runs/demo's latest checkpoints (a finished stage trains no further);
# remove runs/demo to train afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
PY=.venv/bin/python
STEPS=${DEMO_STEPS:+train.steps=$DEMO_STEPS}

[ -f shards/sample/train/index.json ] || $PY pipeline/shard.py sample --out shards/sample
# the project's recipe (configs/recipe/project.yaml) at the demo's sizes
TRAIN="$PY pipeline/train.py configs/recipe/project.yaml configs/experiment/demo.yaml"
$TRAIN train.stage=edge train.resume=latest $STEPS
# the project's texture stages add its texture layer (configs/recipe/project-texture.yaml)
TEXTURE="$TRAIN configs/recipe/project-texture.yaml train.resume=latest train.edge_checkpoint=runs/demo/edge"
$TEXTURE train.stage=texture $STEPS
# G2 trusts the true edges it learned from; here it learns how far to trust G1's
$TEXTURE train.stage=edge-texture train.texture_checkpoint=runs/demo/texture $STEPS
$PY pipeline/evaluate.py --checkpoint runs/demo/edge-texture --images shards/sample/test \
    --masks shards/sample/masks --out outputs/demo/eval --save-images
# the bar to clear: every hole filled with the mean colour of its image's known pixels
$PY pipeline/evaluate.py --method mean --images shards/sample/test \
    --masks shards/sample/masks --out outputs/demo/eval-mean --image-size 64 --experiment dina-demo
# what G2 starts from (model.coarse_fill): the training should add to it
$PY pipeline/evaluate.py --method pull-push --images shards/sample/test \
    --masks shards/sample/masks --out outputs/demo/eval-pull-push --image-size 64 \
    --experiment dina-demo
# what training added: the model's PSNR minus that of the fill it starts from, per bucket
$PY - <<'PY'
import json
model, start = (json.load(open(f"outputs/demo/{d}/metrics.json")) for d in ("eval", "eval-pull-push"))
print("gain over its start (dB PSNR, model - pull-push fill): " + ", ".join(
    f"{b} {model[b]['psnr'] - start[b]['psnr']:+.2f}" for b in model))
PY
cat <<TXT

Demo done.
  checkpoints:  runs/demo/{edge,texture,edge-texture}/checkpoints
  evaluation:   outputs/demo/eval/table.md (per mask bucket: PSNR, SSIM, L1/MAE in our protocol and EdgeConnect's; LPIPS, FID where their weights are found), outputs/demo/eval/images/
  mean fill:    outputs/demo/eval-mean/table.md (the baseline the model should beat)
  pull-push:    outputs/demo/eval-pull-push/table.md (the fill G2 starts from)
  MLflow:       .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db  (experiment dina-demo)
TXT

#!/usr/bin/env bash
# The evaluation of docs/evaluation.md: the paper's protocol (3 seed sets x 10 classifiers per point)
# on PneumoniaMNIST, BreastMNIST and BUSI (a folder of class subfolders, packed by the job), one
# after another, each with its own log (a rerun appends to it); jobs.log has each start and end with
# the exit status. Rerunning the script resumes every dataset where its aucs.csv stops. Usage
# (detached, one BLAS/torch thread):
#   setsid nohup env OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 jobs/evaluate_all.sh [OUT] > /dev/null 2>&1 &
# RANKERS (default enrich,random), EMBEDDERS (default configs/evaluate.yaml's) and DATASETS (default
# all three, in this order) choose a part, e.g.
#   RANKERS=typiclust,random EMBEDDERS=vae DATASETS="busi breastmnist" jobs/evaluate_all.sh runs/evaluation/typiclust
# and SET adds settings to every dataset, separated by spaces, e.g. SET="evaluate.fractions=[0.0001,0.05,0.1]"
# (a one-frame seed set) or SET="evaluate.replicates=10 evaluate.models_per_replicate=3" (more seed sets)
set -u
cd "$(dirname "$0")/.."
OUT=${1:-runs/evaluation/protocol30}
DATA=${DATA:-../shared/data}
mkdir -p "$OUT"
RANKERS="evaluate.rankers=[${RANKERS:-enrich,random}]"
EMBEDDERS=${EMBEDDERS:+"evaluate.embedders=[$EMBEDDERS]"}
read -ra SET_WORDS <<< "${SET:-}"  # split on spaces, no globbing of a list's brackets
SETTINGS=()
for setting in "${SET_WORDS[@]}"; do SETTINGS+=(--set "$setting"); done
DATASETS=${DATASETS:-pneumoniamnist breastmnist busi}
run() {  # name, dataset, extra --set arguments...
  local name=$1 dataset=$2
  shift 2
  echo "$(date -u +%FT%TZ) start $name" >> "$OUT/jobs.log"
  .venv/bin/enrich-ray evaluate --dataset "$dataset" --out "$OUT" --set "$RANKERS" ${EMBEDDERS:+--set "$EMBEDDERS"} "${SETTINGS[@]}" "$@" >> "$OUT/$name.log" 2>&1
  local rc=$?  # before the date's command substitution, which sets $? to its own status
  echo "$(date -u +%FT%TZ) end $name rc=$rc" >> "$OUT/jobs.log"
}
for name in $DATASETS; do
  case $name in
    pneumoniamnist) run pneumoniamnist "$DATA/pneumoniamnist_28/pneumoniamnist.npz" ;;
    breastmnist) run breastmnist "$DATA/breastmnist_28/breastmnist.npz" --set vae.max_epochs=30 ;;
    busi) run busi "$DATA/busi_256/Dataset_BUSI_with_GT" --set vae.max_epochs=30 --set decode.size=64 ;;
    *) echo "evaluate_all.sh: unknown dataset $name (pneumoniamnist, breastmnist, busi)" >&2; exit 2 ;;
  esac
done

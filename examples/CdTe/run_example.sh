#!/usr/bin/env bash
# README command 1: ShakeNBreak distortions for V_Cd and Te_Cd in 64-atom CdTe, relaxed with the offline
# default MLFF (CHGNet) through ShakeNBreak's own `snb-run --relaxer`, then read by ShakeNBreak's tools.
# Usage: bash examples/CdTe/run_example.sh [OUTPUT_DIR]   (default: examples/CdTe/output; rerunning resumes)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-"$here/output"}
mkdir -p "$out"
cd "$out"
start=$(date +%s)

if [ ! -f distortion_metadata.json ]; then
  echo "== snb-generate_all: distortions for V_Cd (0, -2) and Te_Cd (0, +2)"
  snb-generate_all -b "$here/CdTe_bulk_POSCAR" -d "$here/defects" --config "$here/snb_config.yaml" >generate.log 2>&1 \
    || { cat generate.log; exit 1; }
fi

echo "== snb-run --relaxer chgnet (ML relaxations; DFT folders untouched)"
snb-run --relaxer chgnet

echo "== snb-analyse / snb-plot / snb-groundstate on the ML tree"
snb-analyse -p ml_tree >analyse.log 2>&1 || { cat analyse.log; exit 1; }
for defect in ml_tree/*/; do  # per defect: plots even when no distortion lowers the energy
  snb-plot -p ml_tree -d "$(basename "$defect")" --format png >>plot.log 2>&1 || { cat plot.log; exit 1; }
done
snb-groundstate -p ml_tree >groundstate.log 2>&1 || { cat groundstate.log; exit 1; }

echo
echo "Energy-vs-distortion plots (snb-plot):"
find "$out/ml_tree" -name "*.png" | sort
echo "Wall time: $(( $(date +%s) - start )) s"

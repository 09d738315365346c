#!/usr/bin/env bash
# The main job on embedded defaults, end to end on this machine, no server and no download:
# a CT series (a procedural spine phantom written as DICOM) is segmented by the default model
# into a DICOM-SEG and the other job outputs, and the result is scored against the phantom's
# exact labels with the metrics service. Output folder: $1, default out/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/demo}

[ -n "${SPINECLOUD_SKIP_BOOTSTRAP:-}" ] || bash scripts/bootstrap.sh
spinecloud=.venv/bin/spinecloud
rm -rf "$out"

echo "==> 1/3 a CT series: spine phantom T9 to sacrum, written as DICOM"
"$spinecloud" phantom generate "$out/case" --format dicom --levels T9:sacrum --seed 7
echo "==> 2/3 segment it with the default model"
"$spinecloud" segment "$out/case/phantom000/dicom" -o "$out/segmentation"
echo "==> 3/3 score the segmentation against the phantom's exact labels"
"$spinecloud" metrics evaluate --pred "$out/segmentation" --ref "$out/case/phantom000" \
  --out "$out/report" --model spine-segresnet-demo
echo "Done: DICOM-SEG, labels, centroids, preview in $out/segmentation; report in $out/report"

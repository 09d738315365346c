#!/usr/bin/env bash
# Install everything SpineCloud needs on a fresh Debian machine, idempotently:
# the Debian packages (Orthanc with its DICOMweb and GDCM plugins, dcmtk, dicom3tools) and a
# virtual environment in .venv with every SpineCloud package installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(orthanc orthanc-dicomweb orthanc-gdcm dcmtk dicom3tools)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  # The package's own service is not wanted: tests and `spinecloud stack` start private ones.
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# Some machines' pip configuration names local package folders that may not exist; pip warns
# about each one on every install. Those lines say nothing about SpineCloud: drop them.
quiet_pip() { "${pip[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
# torch first and pinned: this version is the CPU build on the project's machines; an
# unpinned torch would pull a multi-gigabyte CUDA build.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "==> installing torch 2.13.0"
  quiet_pip "torch==2.13.0"
fi
echo "==> installing SpineCloud packages (editable) and developer tools"
quiet_pip -e shared \
  -e "services/metrics[test]" \
  -e services/inference \
  -e services/training \
  -e "services/gateway[test]" \
  -r requirements-dev.txt
# nnU-Net v2 without its declared timm/torchvision (see requirements-nnunet.txt).
quiet_pip --no-deps -r requirements-nnunet.txt

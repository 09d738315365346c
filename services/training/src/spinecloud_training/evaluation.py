"""Validation predictions and references written as NIfTI folders for the metrics service.

The training worker does not score a model itself: it writes, for each validation case, the
model's prediction and the reference as canonical label maps (``pred/<case>.nii.gz``,
``ref/<case>.nii.gz``, same grid, same file names) and hands both folders to the metrics
service (an ``Evaluation`` row and the ``spinecloud.metrics.evaluate`` task), which computes
the full benchmark panel.

* SegResNet: the bundle's network (read through the artefact contract) by sliding window on
  each case prepared as for training, i.e. on the model's grid (RAS, target spacing).
* nnU-Net: nnU-Net's own validation predictions of the fold and the raw dataset's labels, on
  the raw image grid (RAS, native spacing), label values mapped back to canonical ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from spinecloud_shared.models.manifest import read_manifest
from spinecloud_shared.nifti import read_nifti, write_nifti
from spinecloud_shared.volume import Volume
from spinecloud_training import bundle
from spinecloud_training.data import CaseSource, load_cases
from spinecloud_training.nnunet.raw_dataset import FILE_ENDING
from spinecloud_training.nnunet.train import label_map_from_dataset_json
from spinecloud_training.presets import PAPER
from spinecloud_training.segresnet import predict_labels, select_device

PRED_DIR = "pred"
REF_DIR = "ref"


def _lut(mapping: Mapping[int, int]) -> npt.NDArray[np.uint8]:
    """Output channel (or nnU-Net value) -> canonical id."""
    table = np.zeros(max(256, max(mapping) + 1), dtype=np.uint8)
    for value, canonical in mapping.items():
        table[value] = canonical
    return table


def _write_pair(
    out_dir: Path, case_id: str, pred: npt.NDArray[np.uint8], ref: npt.NDArray[np.uint8],
    affine: npt.NDArray[np.float64],
) -> None:  # fmt: skip
    write_nifti(Volume(pred, affine), out_dir / PRED_DIR / f"{case_id}.nii.gz", dtype=np.uint8)
    write_nifti(Volume(ref, affine), out_dir / REF_DIR / f"{case_id}.nii.gz", dtype=np.uint8)


def write_segresnet_eval(
    bundle_dir: Path, sources: Sequence[CaseSource], out_dir: Path, *, device: str | None = None
) -> list[str]:
    """Predictions of the bundle on ``sources`` and their references; returns the case ids."""
    manifest = read_manifest(bundle_dir, verify=True)
    target = select_device(device)
    model = bundle.load_network(bundle_dir, target)
    preset = replace(
        PAPER,
        spacing_mm=manifest.target_spacing_mm,
        patch_size=manifest.patch_size,
        window_hu=manifest.intensity.window_hu,
    )
    lut = _lut(manifest.labels)
    written = []
    for case in load_cases(sources, preset, manifest.labels).cases:
        channels = predict_labels(model, torch.from_numpy(case.image)[None], preset, target)
        pred = lut[channels[0, 0].cpu().numpy().astype(np.intp)]
        ref = lut[case.label[0].astype(np.intp)]
        _write_pair(out_dir, case.case_id, pred, ref, case.affine_ras)
        written.append(case.case_id)
    return written


def write_nnunet_eval(
    model_folder: Path,
    fold_dir: Path,
    raw_folder: Path,
    cases: Mapping[str, str],
    out_dir: Path,
) -> list[str]:
    """nnU-Net's validation predictions of ``cases`` (identifier -> case id) and the raw
    dataset's labels, as canonical label maps named by case id; returns the case ids."""
    dataset = json.loads((model_folder / "dataset.json").read_text())
    lut = _lut(label_map_from_dataset_json(dataset))
    written = []
    for identifier, case_id in sorted(cases.items()):
        pred_path = fold_dir / "validation" / f"{identifier}{FILE_ENDING}"
        if not pred_path.is_file():
            continue
        pred = read_nifti(pred_path)
        ref = read_nifti(raw_folder / "labelsTr" / f"{identifier}{FILE_ENDING}")
        _write_pair(
            out_dir,
            case_id,
            lut[pred.array.astype(np.intp)],
            lut[ref.array.astype(np.intp)],
            ref.affine_ras,
        )
        written.append(case_id)
    return written

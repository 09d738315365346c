"""Turning label-map files into validated canonical arrays on one grid, and pairing folders.

Every error names the file and the problem (``LabelError``, ``GeometryMismatchError``,
``NiftiInputError``), so the CLI can print it and the worker can store it as the failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from spinecloud_metrics.labelmap import IndexedLabelMap
from spinecloud_shared import labels
from spinecloud_shared.errors import GeometryMismatchError, InvalidInputError, LabelError
from spinecloud_shared.resample import Interpolation, resample_like
from spinecloud_shared.volume import Volume

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def _check_integer(array: npt.NDArray[np.generic], source: str) -> None:
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise LabelError(f"{source}: label map contains NaN or infinite values.", path=source)
        if not np.array_equal(array, np.rint(array)):
            raise LabelError(f"{source}: label map contains non-integer values.", path=source)
    elif array.dtype.kind not in "iub":
        raise LabelError(f"{source}: label map has non-numeric type {array.dtype}.", path=source)
    if array.size and array.dtype.kind in "if" and array.min() < 0:
        raise LabelError(f"{source}: label map contains negative label ids.", path=source)


def _as_uint8(array: npt.NDArray[np.generic], source: str) -> npt.NDArray[np.uint8]:
    """The label map as uint8, refusing ids that do not fit (none of them is canonical)."""
    if array.dtype == np.uint8:
        return array  # type: ignore[return-value]
    top = int(array.max()) if array.size else 0
    if top > np.iinfo(np.uint8).max:
        unknown = sorted(int(v) for v in np.unique(array) if v > labels.MAX_ID)
        raise LabelError(
            f"{source}: label ids {unknown[:10]} are not canonical vertebrae (VerSe ids 1-26, "
            "28); is the label scheme right (e.g. --pred-scheme totalseg_v2)?",
            path=source,
            unknown=unknown[:10],
        )
    return array.astype(np.uint8)


def canonical_labels(
    array: npt.NDArray[np.generic], scheme: labels.Scheme | str, source: str
) -> IndexedLabelMap:
    """A validated, indexed canonical (VerSe id) label map from a label map in ``scheme``.

    Canonical input must hold only canonical ids; other schemes keep their spine classes and
    drop everything else (organs of a TotalSegmentator map), as ``labels.convert`` does.
    """
    _check_integer(array, source)
    if labels.Scheme(scheme) is not labels.Scheme.CANONICAL:
        try:
            return IndexedLabelMap.index(labels.convert(array, scheme))
        except LabelError as exc:
            raise LabelError(f"{source}: {exc.message}", path=source) from exc
    label_map = IndexedLabelMap.index(_as_uint8(array, source))
    unknown = [v for v in label_map.present() if v not in labels.ALL_IDS]
    if unknown:
        raise LabelError(
            f"{source}: label ids {unknown} are not canonical vertebrae (VerSe ids 1-26, 28); "
            "is the label scheme right (e.g. --pred-scheme totalseg_v2)?",
            path=source,
            unknown=unknown,
        )
    return label_map


def on_reference_grid(pred: Volume, ref: Volume, *, resample: bool) -> Volume:
    """The prediction on the reference grid: unchanged, resampled (nearest) if asked, or refused."""
    if pred.same_grid(ref):
        return pred
    if resample:
        return resample_like(pred, ref, interpolation=Interpolation.NEAREST)
    pred_name, ref_name = pred.meta.get("source", "prediction"), ref.meta.get("source", "reference")
    raise GeometryMismatchError(
        f"{pred_name} and {ref_name} are not on the same grid: shape {pred.shape} vs "
        f"{ref.shape}, spacing {_fmt(pred.spacing_mm)} vs {_fmt(ref.spacing_mm)} mm, "
        f"orientation {pred.orientation} vs {ref.orientation}. Resample the prediction "
        "explicitly (resample=True, --resample) to evaluate it on the reference grid.",
        pred=str(pred_name),
        ref=str(ref_name),
    )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def case_id(path: Path) -> str:
    """A case's id: its file name without the NIfTI suffix."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclass(frozen=True)
class CasePair:
    """A prediction file and the reference file it is evaluated against."""

    case_id: str
    pred: Path
    ref: Path


def _nifti_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: not a folder.", path=str(folder))
    files = [p for p in sorted(folder.iterdir()) if p.name.endswith(NIFTI_SUFFIXES)]
    return {case_id(p): p for p in files}


def pair_folders(pred_dir: str | Path, ref_dir: str | Path) -> list[CasePair]:
    """Pair NIfTI label maps by file name (case id = name without ``.nii``/``.nii.gz``).

    Every reference case needs a prediction; predictions without a reference are refused too,
    so that a typo never shrinks the evaluated set silently.
    """
    preds, refs = _nifti_files(Path(pred_dir)), _nifti_files(Path(ref_dir))
    if not refs:
        raise InvalidInputError(f"{ref_dir}: no NIfTI label maps (*.nii, *.nii.gz).")
    missing = sorted(set(refs) - set(preds))
    extra = sorted(set(preds) - set(refs))
    if missing or extra:
        raise InvalidInputError(
            f"Prediction folder {pred_dir} and reference folder {ref_dir} do not pair up by file "
            f"name: no prediction for {missing[:10]}, no reference for {extra[:10]}.",
            missing=missing,
            extra=extra,
        )
    return [CasePair(cid, preds[cid], refs[cid]) for cid in sorted(refs)]

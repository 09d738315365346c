"""The files one inference job leaves behind, besides the DICOM-SEG that goes to Orthanc.

``write_outputs`` writes, into one folder:

- ``scheme.nii.gz``: the canonical label map (uint8 VerSe ids) on the CT's grid;
- ``centroids_ctd.json``: vertebra centroids as a VerSe ``_ctd.json``;
- ``summary.json``: levels present (head to feet), per-vertebra voxel count, volume in ml and
  centroid in RAS mm, the grid, the model, plus the plausibility findings and per-stage
  timings the caller passes in;
- ``preview.png``: mid-sagittal and coronal CT slices through the spine (bone window W 1800 /
  L 400) with the vertebrae overlaid in their colours and named, for a quick look;
- ``segmentation.dcm``: the DICOM-SEG, only when the source series' datasets are given.

The preview follows the radiological conventions a clinician expects: head up, the sagittal
view with anterior on the left, the coronal view with the patient's right on the left, square
millimetres (aspect ratio from the voxel spacing), orientation letters at the edges.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinecloud_inference.dicom_seg import ModelRef, write_dicom_seg
from spinecloud_shared import geometry
from spinecloud_shared import labels as scheme
from spinecloud_shared.centroids import (
    Centroids,
    canonical_in_box,
    centroids_from_labels,
    voxel_centres,
    write_ctd_json,
)
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.volume import Volume

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from pydicom.dataset import Dataset

__all__ = [
    "OUTPUT_FILES",
    "PREVIEW_SIZE_PX",
    "summary",
    "vertebra_volumes_ml",
    "voxel_counts",
    "voxel_volume_ml",
    "write_outputs",
    "write_preview",
    "write_summary",
]

#: Output key -> file name inside the job's output folder.
OUTPUT_FILES: dict[str, str] = {
    "labels_nifti": "labels.nii.gz",
    "centroids_json": "centroids_ctd.json",
    "summary_json": "summary.json",
    "preview_png": "preview.png",
    "dicom_seg": "segmentation.dcm",
}
#: Width and height of the preview image in pixels.
PREVIEW_SIZE_PX = (1400, 900)
PREVIEW_DPI = 100
#: Bone window (width, level) in HU.
BONE_WINDOW_HU = (1800.0, 400.0)
OVERLAY_ALPHA = 0.45
#: Columns of a view with no voxel above this (air) are cropped, keeping this margin.
BODY_THRESHOLD_HU = -500.0
CROP_MARGIN_MM = 10.0
#: Level names stay this far inside the top and bottom edges of a view.
LABEL_EDGE_MM = 5.0


# --------------------------------------------------------------------------- numbers


def voxel_volume_ml(grid: Volume) -> float:
    """Volume of one voxel of ``grid`` in millilitres (cm³)."""
    return float(abs(np.linalg.det(grid.affine_ras[:3, :3]))) / 1000.0


def voxel_counts(label_map: Volume) -> dict[int, int]:
    """Canonical id -> number of voxels, for each class present, head to feet.

    Counted inside the map's foreground box (``centroids.canonical_in_box``): the same counts
    as over the whole map, without passes over its background.
    """
    array, box = canonical_in_box(label_map.array)
    if box is None:
        return {}
    counts = np.bincount(array[box].ravel(), minlength=scheme.MAX_ID + 1)
    present = sorted((int(i) for i in np.flatnonzero(counts) if i != 0), key=_order)
    return {i: int(counts[i]) for i in present}


def vertebra_volumes_ml(label_map: Volume) -> dict[int, float]:
    """Canonical id -> volume in ml (voxel count times voxel volume), head to feet."""
    per_voxel = voxel_volume_ml(label_map)
    return {i: n * per_voxel for i, n in voxel_counts(label_map).items()}


def _order(label_id: int) -> int:
    return scheme.by_id(label_id).order


def _jsonable(value: Any) -> Any:
    """Plain JSON values from dataclasses, pydantic models, mappings, sequences and numpy."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic | np.ndarray):
        return _jsonable(value.tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def summary(
    label_map: Volume,
    *,
    model_ref: ModelRef | str,
    centroids: Centroids | None = None,
    findings: Sequence[Any] | None = None,
    timings: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The job summary as a JSON-ready dict (see the module docstring)."""
    model = ModelRef.parse(model_ref)
    counts = voxel_counts(label_map)
    centres = centroids if centroids is not None else centroids_from_labels(label_map)
    per_voxel = voxel_volume_ml(label_map)
    return {
        "model": {"name": model.name, "version": model.version, "ref": model.ref},
        "levels": [scheme.by_id(i).name for i in counts],
        "vertebrae": [
            {
                "id": i,
                "name": scheme.by_id(i).name,
                "voxels": n,
                "volume_ml": round(n * per_voxel, 3),
                "centroid_ras_mm": [round(float(v), 2) for v in centres[i]],
            }
            for i, n in counts.items()
        ],
        "grid": {
            "shape": list(label_map.shape),
            "spacing_mm": [round(s, 4) for s in label_map.spacing_mm],
            "orientation": label_map.orientation,
        },
        "findings": _jsonable(list(findings or [])),
        "timings_s": {str(k): round(float(v), 3) for k, v in (timings or {}).items()},
    }


def write_summary(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write a summary dict as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- preview

_CompassLetters = tuple[str, str]  # (left edge, right edge)


@dataclasses.dataclass(frozen=True)
class _Panel:
    """One 2D view: CT and labels (rows top to bottom, columns left to right) and its size."""

    title: str
    ct: npt.NDArray[Any]
    labels: npt.NDArray[np.uint8]
    width_mm: float
    height_mm: float
    letters: _CompassLetters


def _spine_path(
    labels_ras: npt.NDArray[np.uint8],
    shape: tuple[int, int, int],
    origin: tuple[int, int, int] = (0, 0, 0),
) -> tuple[npt.NDArray[np.intp], ...]:
    """Per axial slice ``z`` of an RAS grid, the ``x`` and ``y`` indices the views cut through.

    ``labels_ras`` is the grid's label map or a crop of it starting at index ``origin`` of a
    grid of ``shape`` (the preview passes the crop around the labels).

    The views follow the spine (a curved reformat): ``x`` through each vertebra's centroid,
    ``y`` halfway between its centroid and its anterior edge, which lies in the vertebral body
    (the centroid itself falls near the canal, where a coronal cut shows only the arches).
    Anchors are interpolated along ``z``, held constant beyond the first and last vertebra.
    Without any label the views pass through the middle of the volume.
    """
    nx, ny, nz = shape
    # Centres inside each class's box: a whole-volume center_of_mass dominated the preview.
    by_label = voxel_centres(labels_ras, origin)
    if not by_label:
        return np.full(nz, nx // 2, dtype=np.intp), np.full(nz, ny // 2, dtype=np.intp)
    present = sorted(by_label)
    centres = np.asarray([by_label[i] for i in present])
    boxes = ndimage.find_objects(labels_ras)
    anterior = np.array([float(boxes[i - 1][1].stop - 1 + origin[1]) for i in present])
    order = np.argsort(centres[:, 2])
    z = np.arange(nz, dtype=np.float64)
    x_path = np.interp(z, centres[order, 2], centres[order, 0])
    y_path = np.interp(z, centres[order, 2], (centres[order, 1] + anterior[order]) / 2.0)
    return (
        np.clip(np.rint(x_path), 0, nx - 1).astype(np.intp),
        np.clip(np.rint(y_path), 0, ny - 1).astype(np.intp),
    )


def _view(plane: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """(horizontal, z) -> rows from superior down, columns reversed (R or A on the left)."""
    return np.ascontiguousarray(plane[::-1, ::-1].T)


def _crop_to_body(panel: _Panel) -> _Panel:
    """The panel without the air columns left and right of the body (and the table)."""
    n_cols = panel.ct.shape[1]
    body = np.flatnonzero((panel.ct > BODY_THRESHOLD_HU).any(axis=0) | panel.labels.any(axis=0))
    if body.size == 0:
        return panel
    margin = round(CROP_MARGIN_MM * n_cols / panel.width_mm)
    lo, hi = max(int(body[0]) - margin, 0), min(int(body[-1]) + margin + 1, n_cols)
    return dataclasses.replace(
        panel,
        ct=panel.ct[:, lo:hi],
        labels=panel.labels[:, lo:hi],
        width_mm=panel.width_mm * (hi - lo) / n_cols,
    )


def _ras_view(volume: Volume) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """``volume.reoriented("RAS")``'s array as a view (no copy of the volume) and its affine.

    The preview reads two planes of it; copying a 512 x 512 x 300 CT and its label map into
    RAS order cost about a second (``bench/inference_e2e.py``).
    """
    transform = nio.ornt_transform(nio.io_orientation(volume.affine_ras), nio.axcodes2ornt("RAS"))
    array = nio.apply_orientation(volume.array, transform)
    affine = volume.affine_ras @ nio.inv_ornt_aff(transform, volume.array.shape)
    return array, affine


def _labels_path(
    label_map: Volume, ras_affine: npt.NDArray[np.float64], shape: tuple[int, int, int]
) -> tuple[npt.NDArray[np.intp], ...]:
    """``_spine_path`` of the label map in RAS order, measured on the crop around its labels."""
    array, box = canonical_in_box(label_map.array)
    if box is None:
        return _spine_path(np.zeros((1, 1, 1), dtype=np.uint8), shape)
    offset = label_map.affine_ras.copy()
    offset[:3, 3] = label_map.world_coordinates(np.array([s.start for s in box], dtype=float))
    crop = Volume(array[box], offset).reoriented("RAS")
    corner = np.linalg.inv(ras_affine) @ np.append(crop.affine_ras[:3, 3], 1.0)
    origin = tuple(int(v) for v in np.rint(corner[:3]))
    return _spine_path(crop.array, shape, (origin[0], origin[1], origin[2]))


def _panels(ct: Volume, label_map: Volume) -> tuple[_Panel, _Panel]:
    """Sagittal and coronal views along the spine, head up, radiological left/right."""
    ct_ras, affine = _ras_view(ct)
    labels_ras, _ = _ras_view(label_map)
    nx, ny, nz = (int(n) for n in ct_ras.shape)
    x_path, y_path = _labels_path(label_map, affine, (nx, ny, nz))
    sx, sy, sz = geometry.spacing_from_affine(affine)
    z = np.arange(nz)
    sagittal = _Panel(
        "Sagittal (along the spine)",
        _view(ct_ras[x_path, :, z].T),
        _view(labels_ras[x_path, :, z].T),
        ny * sy,
        nz * sz,
        ("A", "P"),
    )
    coronal = _Panel(
        "Coronal (through the vertebral bodies)",
        _view(ct_ras[:, y_path, z]),
        _view(labels_ras[:, y_path, z]),
        nx * sx,
        nz * sz,
        ("R", "L"),
    )
    return _crop_to_body(sagittal), _crop_to_body(coronal)


def _overlay(label_slice: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """RGBA image: each vertebra in its colour, background transparent."""
    palette = np.zeros((scheme.MAX_ID + 1, 4), dtype=np.float32)
    for vertebra in scheme.VERTEBRAE:
        palette[vertebra.id, :3] = np.asarray(vertebra.color_rgb, dtype=np.float32) / 255.0
        palette[vertebra.id, 3] = OVERLAY_ALPHA
    return palette[label_slice]


def _text_colour(rgb: tuple[int, int, int]) -> str:
    """Black or white, whichever reads better on a background of this colour."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "black" if luminance > 140 else "white"


def _name_levels(ax: Axes, panel: _Panel) -> None:
    """Write each vertebra's name, on its colour, to the left of its pixels in this view."""
    rows, cols = panel.labels.shape
    mm_row, mm_col = panel.height_mm / rows, panel.width_mm / cols
    for label_id in (int(v) for v in np.unique(panel.labels) if v != 0):
        r, c = np.nonzero(panel.labels == label_id)
        vertebra = scheme.by_id(label_id)
        height = panel.height_mm - (float(np.median(r)) + 0.5) * mm_row
        ax.text(
            max(float(c.min()) * mm_col - 6.0, 2.0),
            min(max(height, LABEL_EDGE_MM), panel.height_mm - LABEL_EDGE_MM),
            vertebra.name,
            color=_text_colour(vertebra.color_rgb),
            fontsize=10,
            fontweight="bold",
            ha="right",
            va="center",
            clip_on=True,
            bbox={
                "facecolor": np.asarray(vertebra.color_rgb) / 255.0,
                "alpha": 0.9,
                "pad": 1.5,
                "edgecolor": "none",
            },
        )


def _draw_panel(ax: Axes, panel: _Panel) -> None:
    width, level = BONE_WINDOW_HU
    extent = (0.0, panel.width_mm, 0.0, panel.height_mm)
    ax.imshow(
        panel.ct,
        cmap="gray",
        vmin=level - width / 2,
        vmax=level + width / 2,
        extent=extent,
        interpolation="bilinear",
    )
    ax.imshow(_overlay(panel.labels), extent=extent, interpolation="nearest")
    _name_levels(ax, panel)
    for x, letter, align in ((0.01, panel.letters[0], "left"), (0.99, panel.letters[1], "right")):
        ax.text(x, 0.5, letter, transform=ax.transAxes, color="yellow", ha=align, fontsize=12)
    ax.set_title(panel.title, color="white", fontsize=12)
    ax.set_axis_off()


def write_preview(
    ct: Volume, label_map: Volume, path: str | Path, *, model_ref: ModelRef | str
) -> Path:
    """Save the sagittal + coronal preview PNG (``PREVIEW_SIZE_PX``), labels over the CT."""
    # matplotlib is imported here, not with the module: it is only needed for this picture.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ct.require_same_grid(label_map, what="CT and label map")
    model = ModelRef.parse(model_ref)
    width_px, height_px = PREVIEW_SIZE_PX
    figure = Figure(figsize=(width_px / PREVIEW_DPI, height_px / PREVIEW_DPI), dpi=PREVIEW_DPI)
    figure.patch.set_facecolor("black")
    FigureCanvasAgg(figure)
    sagittal, coronal = _panels(ct, label_map)
    axes = figure.subplots(1, 2, width_ratios=[sagittal.width_mm, coronal.width_mm])
    for ax, panel in zip(axes, (sagittal, coronal), strict=True):
        _draw_panel(ax, panel)
    present = [scheme.by_id(i).name for i in vertebra_volumes_ml(label_map)]
    levels = f"{present[0]}–{present[-1]}" if present else "no vertebra found"
    figure.suptitle(
        f"SpineCloud vertebrae ({model.ref}): {levels}. Bone window W 1800 / L 400. "
        "Automatic result, for review.",
        color="white",
        fontsize=12,
    )
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.92, wspace=0.05)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=PREVIEW_DPI, facecolor="black")
    return path


# --------------------------------------------------------------------------- all outputs


def write_outputs(
    ct: Volume,
    labels: Volume,
    out_dir: str | Path,
    *,
    model_ref: ModelRef | str,
    findings: Sequence[Any] | None = None,
    timings: Mapping[str, float] | None = None,
    source_datasets: Sequence[Dataset] | None = None,
) -> dict[str, Path]:
    """Write every per-job output into ``out_dir``; output key -> path (see ``OUTPUT_FILES``).

    ``labels`` is the canonical label map on the CT's grid (GeometryMismatchError
    otherwise). The DICOM-SEG is written only when ``source_datasets`` (the source series'
    instances) are given; it then requires the grid to be the series' DICOM grid.
    """
    ct.require_same_grid(labels, what="CT and label map")
    label_map = labels.with_array(canonical_in_box(labels.array)[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in OUTPUT_FILES.items()}
    centroids = centroids_from_labels(label_map)
    write_nifti(label_map, paths["labels_nifti"], dtype=np.uint8)
    write_ctd_json(centroids, label_map, paths["centroids_json"])
    data = summary(
        label_map, model_ref=model_ref, centroids=centroids, findings=findings, timings=timings
    )
    write_summary(data, paths["summary_json"])
    write_preview(ct, label_map, paths["preview_png"], model_ref=model_ref)
    if source_datasets is None:
        del paths["dicom_seg"]
    else:
        write_dicom_seg(label_map, source_datasets, paths["dicom_seg"], model=model_ref)
    return paths

"""The VerSe'20 dataset layout (BIDS-like): writer and reader.

::

    root/rawdata/sub-XXX/sub-XXX_dir-ax_ct.nii.gz                       CT, int16 HU
    root/derivatives/sub-XXX/sub-XXX_dir-ax_seg-vert_msk.nii.gz         canonical ids, uint8
    root/derivatives/sub-XXX/sub-XXX_dir-ax_seg-subreg_ctd.json         centroids (VerSe JSON)
    root/splits.json                                                    optional, see below

A scan is named by its file stem (``sub-XXX_dir-ax``); a subject may have several scans
(``_dir-sag``, ``_dir-iso``, ...), all found by the ``*_ct.nii.gz`` pattern. VerSe ships its
splits as separate folders (``dataset-01training``, ``dataset-02validation``, ...), each such
folder being one ``root`` here. For a single folder holding several splits, SpineCloud adds
``splits.json``: ``{"train": ["sub-XXX", ...], "val": [...], "test": [...]}`` (subject ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from spinecloud_shared import labels
from spinecloud_shared.centroids import (
    Centroids,
    centroids_from_labels,
    read_ctd_json,
    write_ctd_json,
)
from spinecloud_shared.errors import InvalidInputError, SpineCloudError
from spinecloud_shared.layouts._common import (
    CT_DTYPE,
    MASK_DTYPE,
    LabelledCase,
    as_pair,
    header_grid,
    read_case_nifti,
    require_grid,
    rewrap,
    split_names,
)
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.phantom import Phantom
from spinecloud_shared.volume import Volume

SPLITS_FILE = "splits.json"
_CT_SUFFIX = "_ct.nii.gz"
_MASK_SUFFIX = "_seg-vert_msk.nii.gz"
_CTD_SUFFIX = "_seg-subreg_ctd.json"


@dataclass(frozen=True)
class VerseCase:
    """One scan read back: ids, its three files, its centroids (label -> RAS mm), its split."""

    case_id: str
    subject: str
    ct_path: Path
    mask_path: Path
    centroids: Centroids
    split: str | None

    def load_ct(self) -> Volume:
        """The CT volume (HU)."""
        return read_case_nifti(self.ct_path, self.case_id)

    def load_labels(self) -> Volume:
        """The label map, checked to hold canonical ids only (LabelError naming the case)."""
        mask = read_case_nifti(self.mask_path, self.case_id)
        try:
            return mask.with_array(labels.check_canonical(mask.array))
        except SpineCloudError as exc:
            raise rewrap(exc, self.case_id) from exc


def subject_name(index: int, prefix: str = "phantom") -> str:
    """The subject id for a running number: 0 -> 'sub-phantom000'."""
    return f"sub-{prefix}{index:03d}"


def write_verse(
    root: str | Path,
    cases: Iterable[LabelledCase],
    *,
    splits: Sequence[str] | None = None,
    first_index: int = 0,
    prefix: str = "phantom",
    ctd_direction: str = "PIR",
) -> list[str]:
    """Write one axial scan per case for subjects ``sub-{prefix}{first_index:03d}``, ....

    Centroids are the phantom's, or computed from the label map for a (CT, labels) pair, and
    are written in voxel coordinates along ``ctd_direction`` (VerSe'20 uses 'PIR').
    ``splits.json`` is created or updated. Returns the case ids (file stems) written.
    """
    root = Path(root)
    cases = list(cases)
    names = split_names(len(cases), splits)
    membership = read_splits(root) if (root / SPLITS_FILE).is_file() else {}
    written = []
    for offset, (case, split) in enumerate(zip(cases, names, strict=True)):
        subject = subject_name(first_index + offset, prefix)
        stem = f"{subject}_dir-ax"
        _write_scan(root, subject, stem, case, ctd_direction)
        membership[subject] = split
        written.append(stem)
    _write_splits(root, membership)
    return written


def _write_scan(
    root: Path, subject: str, stem: str, case: LabelledCase, ctd_direction: str
) -> None:
    ct, label_map = as_pair(case, stem)
    centroids = case.centroids if isinstance(case, Phantom) else centroids_from_labels(label_map)
    write_nifti(ct, root / "rawdata" / subject / f"{stem}{_CT_SUFFIX}", dtype=CT_DTYPE)
    derivatives = root / "derivatives" / subject
    write_nifti(label_map, derivatives / f"{stem}{_MASK_SUFFIX}", dtype=MASK_DTYPE)
    write_ctd_json(
        centroids, label_map, derivatives / f"{stem}{_CTD_SUFFIX}", direction=ctd_direction
    )


def _write_splits(root: Path, membership: dict[str, str]) -> None:
    by_split: dict[str, list[str]] = {}
    for subject in sorted(membership):
        by_split.setdefault(membership[subject], []).append(subject)
    root.mkdir(parents=True, exist_ok=True)
    (root / SPLITS_FILE).write_text(json.dumps(by_split, indent=1))


def read_splits(root: Path) -> dict[str, str]:
    """``splits.json`` as subject -> split; InvalidInputError when unusable."""
    path = root / SPLITS_FILE
    try:
        by_split = json.loads(path.read_text())
        return {str(s): str(name) for name, subjects in by_split.items() for s in subjects}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise InvalidInputError(
            f"{path}: not a valid splits file ({exc}).", path=str(path)
        ) from exc


def read_verse(root: str | Path, *, split: str | None = None) -> Iterator[VerseCase]:
    """Scans of a VerSe-layout folder, in name order; only ``split``'s when given.

    A split needs ``splits.json``. For each scan the mask and centroid files must exist, and the
    mask must be on the CT's grid (checked from the headers; voxels are read by
    ``VerseCase.load_ct`` / ``load_labels``). Errors name the scan and the file:
    NiftiInputError (missing or unreadable image), GeometryMismatchError, InvalidInputError or
    LabelError (missing or bad centroid file).
    """
    root = Path(root)
    membership = read_splits(root) if (root / SPLITS_FILE).is_file() else None
    if split is not None and membership is None:
        raise InvalidInputError(
            f"{root / SPLITS_FILE}: missing, so split {split!r} is unknown.",
            path=str(root / SPLITS_FILE),
        )
    for ct_path in sorted((root / "rawdata").glob(f"sub-*/*{_CT_SUFFIX}")):
        subject = ct_path.parent.name
        case_split = membership.get(subject) if membership is not None else None
        if split is None or case_split == split:
            yield read_scan(root, ct_path, case_split)


def read_scan(root: Path, ct_path: Path, split: str | None) -> VerseCase:
    """One scan given its ``rawdata`` CT path; mask and centroids checked as the reader does."""
    subject = ct_path.parent.name
    stem = ct_path.name[: -len(_CT_SUFFIX)]
    derivatives = root / "derivatives" / subject
    mask_path = derivatives / f"{stem}{_MASK_SUFFIX}"
    ctd_path = derivatives / f"{stem}{_CTD_SUFFIX}"
    grid = header_grid(ct_path, stem)
    require_grid(grid, header_grid(mask_path, stem), stem, mask_path, ct_path)
    if not ctd_path.is_file():
        raise InvalidInputError(
            f"{stem}: {ctd_path}: no such centroid file.", case_id=stem, path=str(ctd_path)
        )
    try:
        centroids = read_ctd_json(ctd_path, grid)
    except SpineCloudError as exc:
        raise rewrap(exc, stem) from exc
    return VerseCase(stem, subject, ct_path, mask_path, centroids, split)

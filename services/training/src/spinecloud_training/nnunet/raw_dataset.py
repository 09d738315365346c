"""SpineCloud cases (phantoms, dataset layouts) written as an nnU-Net v2 raw dataset.

Layout written under ``<nnUNet_raw>/Dataset<ID>_<name>/``::

    imagesTr/case0000_0000.nii.gz   CT in HU (channel 0, "CT")
    labelsTr/case0000.nii.gz        nnU-Net label values, consecutive from 0
    dataset.json                    channel_names, labels (name -> value), numTraining,
                                    file_ending, overwrite_image_reader_writer: SimpleITKIO
    spinecloud_cases.json           nnU-Net identifier -> SpineCloud case id, excluded cases

Every case is reoriented exactly (no interpolation) to RAS before it is written, so that all
training images share one axis order; nnU-Net reads them with SimpleITK, whose arrays run
``(z, y, x)``. The inference backend relies on this: a model trained here has manifest
orientation ``RAS`` (see ``spinecloud_inference.backends.nnunet``). nnU-Net resamples and
normalises by itself, so the native spacing and HU are kept.

Labels: ``canonical_ids`` (head to feet; default the 25 standard classes) get the values
1..N in that order and are named as in ``spinecloud_shared.labels`` ('L4', 'sacrum'). A case
that cannot be read, whose label map is not canonical or not on the CT's grid, or that holds a
canonical id outside ``canonical_ids`` (it would be trained as background), is excluded with
its reason; when none is left, ``InvalidInputError`` lists them in ``details["excluded"]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from spinecloud_shared import labels
from spinecloud_shared.errors import GeometryMismatchError, InvalidInputError, SpineCloudError
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.volume import Volume
from spinecloud_training.data import (
    CaseSource,
    ExcludedCase,
    check_declared,
    unexpected_exclusion,
)

FILE_ENDING = ".nii.gz"
CASES_FILE = "spinecloud_cases.json"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True)
class RawDataset:
    """A written raw dataset: where, its nnU-Net id and name, and its label table."""

    folder: Path
    dataset_id: int
    #: nnU-Net label value -> canonical id (0 -> 0).
    label_map: dict[int, int]
    cases: dict[str, str] = field(default_factory=dict)
    excluded: list[ExcludedCase] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``Dataset<ID>_<name>``, as nnU-Net names it."""
        return self.folder.name


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset042_Spine``; nnU-Net wants a three-digit id (1..999) and a plain name."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids run from 1 to 999, got {dataset_id}.")
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"dataset name must be letters and digits only, got {name!r}.")
    return f"Dataset{dataset_id:03d}_{name}"


def label_table(canonical_ids: Sequence[int] | None = None) -> dict[int, int]:
    """nnU-Net label value -> canonical id: background 0, then 1..N head to feet."""
    ids = list(labels.STANDARD_IDS if canonical_ids is None else canonical_ids)
    if len(set(ids)) != len(ids) or 0 in ids:
        raise ValueError("canonical_ids must be distinct vertebra ids (no 0).")
    ordered = sorted((labels.by_id(i) for i in ids), key=lambda v: v.order)
    return {0: 0} | {value: v.id for value, v in enumerate(ordered, start=1)}


def dataset_json(label_map: dict[int, int], num_training: int) -> dict[str, object]:
    """The ``dataset.json`` nnU-Net v2 reads: one CT channel, labels by canonical name."""
    names = {"background": 0} | {
        labels.by_id(target).name: value for value, target in label_map.items() if value
    }
    return {
        "channel_names": {"0": "CT"},
        "labels": names,
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "SimpleITKIO",
    }


def _lookup(label_map: dict[int, int]) -> npt.NDArray[np.uint8]:
    """Canonical id -> nnU-Net value; ids outside the table map to 0."""
    table = np.zeros(labels.MAX_ID + 1, dtype=np.uint8)
    for value, target in label_map.items():
        table[target] = value
    return table


def _checked_pair(case_id: str, ct: Volume, label_volume: Volume) -> tuple[Volume, Volume]:
    """(CT, canonical labels) in RAS, after checking grids and ids."""
    if not ct.same_grid(label_volume):
        raise GeometryMismatchError(
            f"{case_id}: the label map is not on the CT's grid.", case_id=case_id
        )
    canonical = label_volume.with_array(labels.check_canonical(label_volume.array))
    return ct.reoriented("RAS"), canonical.reoriented("RAS")


def write_case(
    folder: Path, identifier: str, ct: Volume, canonical: Volume, lookup: npt.NDArray[np.uint8]
) -> None:
    """Write one case's image and nnU-Net label files (CT as int16 when it is integral)."""
    check_declared(identifier, canonical.array, lookup)
    values = lookup[canonical.array]
    if not np.any(values):
        raise InvalidInputError(f"{identifier}: no labelled class of the dataset is present.")
    ct_dtype = np.int16 if ct.array.dtype.kind in "iu" else np.float32
    write_nifti(ct, folder / "imagesTr" / f"{identifier}_0000{FILE_ENDING}", dtype=ct_dtype)
    label_volume = canonical.with_array(values)
    write_nifti(label_volume, folder / "labelsTr" / f"{identifier}{FILE_ENDING}", dtype=np.uint8)


def write_raw_dataset(
    sources: Iterable[CaseSource],
    raw_root: Path,
    *,
    dataset_id: int,
    name: str = "Spine",
    canonical_ids: Sequence[int] | None = None,
) -> RawDataset:
    """Write ``sources`` as nnU-Net raw dataset ``dataset_id`` under ``raw_root``.

    Refuses to write over an existing dataset folder; raises ``InvalidInputError`` when no
    case could be written.
    """
    folder = Path(raw_root) / dataset_folder_name(dataset_id, name)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; remove it or pick another dataset id.")
    label_map = label_table(canonical_ids)
    lookup = _lookup(label_map)
    cases: dict[str, str] = {}
    excluded: list[ExcludedCase] = []
    for source in sources:
        identifier = f"case{len(cases):04d}"
        try:
            ct, canonical = _checked_pair(source.case_id, *source.load())
            write_case(folder, identifier, ct, canonical, lookup)
        except SpineCloudError as exc:
            excluded.append(ExcludedCase(source.case_id, exc.message, exc.code))
            continue
        except Exception as exc:  # a damaged file can raise anything from its reader
            excluded.append(unexpected_exclusion(source.case_id, exc))
            continue
        cases[identifier] = source.case_id
    if not cases:
        reasons = "; ".join(e.reason for e in excluded[:5])
        raise InvalidInputError(
            f"{folder}: no usable case" + (f" ({reasons})." if reasons else "."),
            excluded=[vars(e) for e in excluded],
        )
    _write_json(folder / "dataset.json", dataset_json(label_map, len(cases)))
    _write_json(
        folder / CASES_FILE,
        {"cases": cases, "excluded": [vars(e) for e in excluded]},
    )
    return RawDataset(folder, dataset_id, label_map, cases, excluded)


def _write_json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))

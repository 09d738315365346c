"""The plain NIfTI layout: image and label folders matched by name, plus a label-map declaration.

::

    root/images/<case>.nii.gz       CT in HU (``<case>_0000.nii.gz``, nnU-Net's name, also read)
    root/labels/<case>.nii.gz       label map, in the folder's own label values
    root/labels.json                the declaration (below)

``labels.json`` says what the label values mean, either by a known scheme or value by value::

    {"scheme": "totalseg_v2"}                          # canonical, totalseg_v2 or totalseg_v1
    {"labels": {"1": "C1", "2": "C2", "20": "L1", "26": "sacrum", "40": null}}

``labels`` maps each label value of the folder (a JSON key, as text) to a canonical vertebra
name (``C1`` ... ``L6``, ``T13``, ``sacrum``, as in ``spinecloud_shared.labels``), a canonical
id (an integer), or ``null`` for a structure that is not a vertebra and is read as background.
A named scheme declares its spine values, and every other value of it is background (as
``labels.convert`` does). Value 0 is always background. A label value found in a case but not
declared is an error (``LabelError``) for that case, never silently dropped.

An optional ``"splits": {"train": [case, ...], "val": [...], "test": [...]}`` assigns cases to
splits; cases it does not name have no split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from spinecloud_shared import labels
from spinecloud_shared.errors import InvalidInputError, LabelError, NiftiInputError
from spinecloud_shared.layouts._common import (
    CT_DTYPE,
    MASK_DTYPE,
    LabelledCase,
    as_pair,
    header_grid,
    read_case_nifti,
    require_grid,
    split_names,
)
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.volume import Volume

__all__ = [
    "DECLARATION_FILE",
    "IMAGES_DIR",
    "LABELS_DIR",
    "PlainCase",
    "case_list",
    "read_case",
    "read_declaration",
    "read_plain",
    "write_plain",
]

IMAGES_DIR = "images"
LABELS_DIR = "labels"
DECLARATION_FILE = "labels.json"
_NII_GZ = ".nii.gz"
_CHANNEL_SUFFIX = "_0000"


@dataclass(frozen=True)
class Declaration:
    """A folder's ``labels.json``: label value -> canonical id (0: background), splits."""

    to_canonical: dict[int, int]
    #: Whether values not in ``to_canonical`` are background (a named scheme) or errors.
    others_background: bool
    splits: dict[str, str]

    def lookup(self, case_id: str, values: Iterable[int]) -> npt.NDArray[np.uint8]:
        """A lookup table value -> canonical id covering ``values``; LabelError naming the
        undeclared values of the case."""
        present = sorted(int(v) for v in values)
        unknown = [v for v in present if v and v not in self.to_canonical]
        if unknown and not self.others_background:
            raise LabelError(
                f"{case_id}: label values {unknown} are not declared in {DECLARATION_FILE}.",
                case_id=case_id,
                unknown=unknown,
            )
        size = max([*present, *self.to_canonical, 0]) + 1
        table = np.zeros(size, dtype=np.uint8)
        for value, target in self.to_canonical.items():
            table[value] = target
        return table


@dataclass(frozen=True)
class PlainCase:
    """One case read back: its id, image and label files, its split and the declaration."""

    case_id: str
    image_path: Path
    label_path: Path
    split: str | None
    declaration: Declaration

    def load_ct(self) -> Volume:
        """The CT volume (HU)."""
        return read_case_nifti(self.image_path, self.case_id)

    def load_labels(self) -> Volume:
        """The label map in canonical ids (LabelError for undeclared or non-integer values)."""
        raw = read_case_nifti(self.label_path, self.case_id)
        array = np.asarray(raw.array)
        if array.dtype.kind == "f" and not (
            np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))
        ):
            raise LabelError(
                f"{self.case_id}: {self.label_path}: label values must be integers.",
                case_id=self.case_id,
                path=str(self.label_path),
            )
        values = np.unique(array).astype(np.int64)
        if values.size and values.min() < 0:
            raise LabelError(
                f"{self.case_id}: {self.label_path}: negative label values.",
                case_id=self.case_id,
                path=str(self.label_path),
            )
        table = self.declaration.lookup(self.case_id, values.tolist())
        return raw.with_array(table[array.astype(np.int64)])


def _canonical_id(value: Any, where: Path) -> int:
    """A declared target: canonical name or id; 0 for null (background)."""
    if value is None:
        return 0
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            return labels.by_id(value).id
        if isinstance(value, str):
            return labels.by_name(value).id
    except LabelError as exc:
        raise InvalidInputError(f"{where}: {exc.message}", path=str(where)) from exc
    except TypeError:
        pass
    raise InvalidInputError(
        f"{where}: a label must map to a vertebra name, a canonical id or null, got {value!r}.",
        path=str(where),
    )


def read_declaration(root: str | Path) -> Declaration:
    """``labels.json`` of a plain folder; InvalidInputError when missing or unusable."""
    path = Path(root) / DECLARATION_FILE
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"{path}: the label declaration cannot be read ({exc}).", path=str(path)
        ) from exc
    if not isinstance(content, dict) or ("labels" in content) == ("scheme" in content):
        raise InvalidInputError(
            f"{path}: give exactly one of 'labels' (value -> vertebra) and 'scheme'.",
            path=str(path),
        )
    if "scheme" in content:
        try:
            scheme = labels.Scheme(content["scheme"])
        except ValueError:
            known = ", ".join(s.value for s in labels.Scheme)
            raise InvalidInputError(
                f"{path}: unknown scheme {content['scheme']!r}; known: {known}.", path=str(path)
            ) from None
        mapping, others_background = dict(labels.TO_CANONICAL[scheme]), True
    else:
        declared = content["labels"]
        if not isinstance(declared, dict):
            raise InvalidInputError(f"{path}: 'labels' must be an object.", path=str(path))
        mapping = {}
        for key, target in declared.items():
            if not str(key).isdigit() or int(key) == 0 or int(key) > 65535:
                raise InvalidInputError(
                    f"{path}: label values are integers from 1 to 65535, got {key!r}.",
                    path=str(path),
                )
            mapping[int(key)] = _canonical_id(target, path)
        others_background = False
    return Declaration(mapping, others_background, _splits(content.get("splits"), path))


def _splits(content: Any, path: Path) -> dict[str, str]:
    if content is None:
        return {}
    try:
        return {str(case): str(name) for name, cases in content.items() for case in cases}
    except (AttributeError, TypeError) as exc:
        raise InvalidInputError(f"{path}: 'splits' is not valid ({exc}).", path=str(path)) from exc


def _case_id(image: Path) -> str:
    stem = image.name[: -len(_NII_GZ)]
    return stem.removesuffix(_CHANNEL_SUFFIX)


def image_paths(root: Path) -> dict[str, Path]:
    """Case id -> image file of every ``images/*.nii.gz``."""
    return {_case_id(p): p for p in sorted((root / IMAGES_DIR).glob(f"*{_NII_GZ}"))}


def case_list(root: str | Path) -> list[tuple[str, str | None]]:
    """(case id, split) of every image and of every label file without an image, by id."""
    root = Path(root)
    declaration = read_declaration(root)
    ids = set(image_paths(root))
    ids |= {p.name[: -len(_NII_GZ)] for p in (root / LABELS_DIR).glob(f"*{_NII_GZ}")}
    return [(case_id, declaration.splits.get(case_id)) for case_id in sorted(ids)]


def read_case(
    root: str | Path, case_id: str, split: str | None, declaration: Declaration | None = None
) -> PlainCase:
    """One case, its files checked from the headers: NiftiInputError for a missing or
    unreadable file, GeometryMismatchError when the labels are not on the image's grid."""
    root = Path(root)
    declaration = declaration or read_declaration(root)
    images = root / IMAGES_DIR
    candidates = [images / f"{case_id}{_NII_GZ}", images / f"{case_id}{_CHANNEL_SUFFIX}{_NII_GZ}"]
    image_path = next((p for p in candidates if p.is_file()), candidates[0])
    label_path = root / LABELS_DIR / f"{case_id}{_NII_GZ}"
    if not label_path.is_file():
        raise NiftiInputError(
            f"{case_id}: {label_path}: no such file (the image has no label map).",
            case_id=case_id,
            path=str(label_path),
        )
    grid = header_grid(image_path, case_id)
    require_grid(grid, header_grid(label_path, case_id), case_id, label_path, image_path)
    return PlainCase(case_id, image_path, label_path, split, declaration)


def read_plain(root: str | Path, *, split: str | None = None) -> Iterable[PlainCase]:
    """Cases of a plain folder in id order (only ``split``'s when given); stops at the first
    bad case with its error (use ``case_list`` and ``read_case`` to go on past bad cases)."""
    root = Path(root)
    declaration = read_declaration(root)
    for case_id, case_split in case_list(root):
        if split is None or case_split == split:
            yield read_case(root, case_id, case_split, declaration)


def write_plain(
    root: str | Path,
    cases: Iterable[LabelledCase],
    *,
    case_ids: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    values: Mapping[int, int] | None = None,
) -> list[str]:
    """Write cases as ``images/<id>.nii.gz`` and ``labels/<id>.nii.gz`` with ``labels.json``.

    ``values`` maps canonical ids to the folder's label values (default: canonical ids as
    they are); the declaration written maps them back. Case ids default to ``case000``, ....
    """
    root = Path(root)
    cases = list(cases)
    ids = list(case_ids) if case_ids is not None else [f"case{i:03d}" for i in range(len(cases))]
    names = split_names(len(cases), splits)
    mapping = dict(values) if values is not None else {i: i for i in labels.ALL_IDS}
    table = np.zeros(labels.MAX_ID + 1, dtype=np.uint16)
    for canonical, value in mapping.items():
        table[canonical] = value
    dtype = MASK_DTYPE if max(mapping.values(), default=0) < 256 else np.uint16
    for case, case_id in zip(cases, ids, strict=True):
        ct, label_map = as_pair(case, case_id)
        write_nifti(ct, root / IMAGES_DIR / f"{case_id}{_NII_GZ}", dtype=CT_DTYPE)
        written = label_map.with_array(table[label_map.array])
        write_nifti(written, root / LABELS_DIR / f"{case_id}{_NII_GZ}", dtype=dtype)
    by_split: dict[str, list[str]] = {}
    if splits is not None:
        for case_id, name in zip(ids, names, strict=True):
            by_split.setdefault(name, []).append(case_id)
    declaration: dict[str, Any] = {
        "labels": {str(v): labels.by_id(c).name for c, v in sorted(mapping.items())}
    }
    if by_split:
        declaration["splits"] = by_split
    root.mkdir(parents=True, exist_ok=True)
    (root / DECLARATION_FILE).write_text(json.dumps(declaration, indent=1) + "\n")
    return ids

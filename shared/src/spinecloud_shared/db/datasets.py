"""The dataset registry: registering, finding and recording the scan of datasets.

The gateway and the CLI register a dataset (``create_dataset``: the row, queued, and the scan
enqueued after commit on the training queue); the training worker's scan
(``spinecloud_training.dataset_tasks``) reads every case and stores what it found with
``record_scan``. Splits and the summary are computed here from plain values, so both ends and
the tests share one rule:

* **Splits** (``assign_splits``): a case keeps the split its layout gives it (``meta.csv``'s
  ``split`` column, VerSe's ``splits.json``, a plain folder's ``labels.json``); the others are
  ordered by the SHA-256 of ``"<seed>:<case id>"`` and cut into train, val and test by the
  fractions (val and test rounded, at least one val case when there are two or more cases to
  draw and the val fraction is not 0; train gets the rest). The same cases, seed and fractions
  always give the same splits.
* **Summary** (``summarize``): usable and excluded case counts, every excluded case with its
  code and sentence, classes present (canonical name -> number of cases holding it), spacing
  (mm) and size (voxels) per axis as min / median / max, and cases per split.

Functions flush; the caller commits (``session_scope``).
"""

from __future__ import annotations

import hashlib
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from spinecloud_shared import labels
from spinecloud_shared.db.models import Dataset, JobStatus
from spinecloud_shared.errors import InvalidInputError, NotFoundError, SpineCloudError
from spinecloud_shared.queue import enqueue_after_commit
from spinecloud_shared.task_names import REGISTER_DATASET, TRAINING_QUEUE

__all__ = [
    "DATASET_PREFIX",
    "DEFAULT_FRACTIONS",
    "LAYOUTS",
    "NAME_PATTERN",
    "SPLIT_NAMES",
    "CaseStats",
    "DatasetConflictError",
    "ExcludedEntry",
    "ScanResult",
    "assign_splits",
    "create_dataset",
    "find_dataset",
    "get_dataset",
    "list_datasets",
    "parse_fractions",
    "record_scan",
    "summarize",
]

#: Layouts a dataset can be registered from.
LAYOUTS = ("totalsegmentator", "verse", "plain", "orthanc")
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
#: How a training job names a registered dataset: ``dataset:<name or id>``.
DATASET_PREFIX = "dataset:"
#: A dataset name: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class DatasetConflictError(SpineCloudError):
    """A dataset name already taken, or a dataset not ready for what was asked."""

    code: ClassVar[str] = "dataset_conflict"
    http_status: ClassVar[int] = 409


@dataclass(frozen=True)
class CaseStats:
    """What a scan keeps of one usable case: its grid and the canonical ids it holds."""

    case_id: str
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    label_ids: tuple[int, ...]


@dataclass(frozen=True)
class ExcludedEntry:
    """An excluded case as stored: id, error code, sentence."""

    case_id: str
    code: str
    reason: str


@dataclass
class ScanResult:
    """What a scan found: usable cases, excluded ones, and the layout's own splits."""

    cases: list[CaseStats] = field(default_factory=list)
    excluded: list[ExcludedEntry] = field(default_factory=list)
    layout_splits: dict[str, str | None] = field(default_factory=dict)


def parse_fractions(value: str | Mapping[str, float] | Sequence[float] | None) -> dict[str, float]:
    """Train, val and test fractions from ``"0.8,0.1,0.1"``, a list or a mapping; they must be
    in [0, 1] and sum to 1 (InvalidInputError otherwise)."""
    if value is None:
        return dict(DEFAULT_FRACTIONS)
    try:
        if isinstance(value, str):
            numbers = [float(part) for part in value.split(",")]
        elif isinstance(value, Mapping):
            numbers = [float(value.get(name, 0.0)) for name in SPLIT_NAMES]
            if set(value) - set(SPLIT_NAMES):
                raise ValueError(f"unknown splits {sorted(set(value) - set(SPLIT_NAMES))}")
        else:
            numbers = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"Split fractions are not numbers ({exc}).") from exc
    if len(numbers) != 3 or any(not 0.0 <= n <= 1.0 for n in numbers):
        raise InvalidInputError("Give three split fractions (train, val, test), each in [0, 1].")
    if abs(sum(numbers) - 1.0) > 1e-6 or numbers[0] <= 0.0:
        raise InvalidInputError(
            f"Split fractions must sum to 1 with a train share above 0, got {numbers}."
        )
    return dict(zip(SPLIT_NAMES, numbers, strict=True))


def assign_splits(
    layout_splits: Mapping[str, str | None], *, seed: int, fractions: Mapping[str, float]
) -> dict[str, str]:
    """Case id -> 'train' / 'val' / 'test' (module doc): the layout's split where it names one
    of them, else drawn by seeded hash order and the fractions."""
    result: dict[str, str] = {}
    drawn: list[str] = []
    for case_id, split in layout_splits.items():
        if split in SPLIT_NAMES:
            result[case_id] = str(split)
        else:
            drawn.append(case_id)
    order = sorted(drawn, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    count = len(order)
    n_val = round(count * fractions.get("val", 0.0))
    n_test = round(count * fractions.get("test", 0.0))
    if count >= 2 and fractions.get("val", 0.0) > 0:
        n_val = max(1, n_val)
    n_val = min(n_val, max(0, count - 1))
    n_test = min(n_test, max(0, count - 1 - n_val))
    for index, case_id in enumerate(order):
        result[case_id] = "val" if index < n_val else "test" if index < n_val + n_test else "train"
    return dict(sorted(result.items()))


def _distribution(values: Iterable[float]) -> dict[str, float]:
    numbers = sorted(values)
    return {
        "min": round(numbers[0], 4),
        "median": round(float(statistics.median(numbers)), 4),
        "max": round(numbers[-1], 4),
    }


def summarize(scan: ScanResult, splits: Mapping[str, str]) -> dict[str, Any]:
    """The stored summary of a scan (module doc)."""
    classes: dict[str, int] = {}
    for case in scan.cases:
        for label_id in case.label_ids:
            name = labels.by_id(label_id).name
            classes[name] = classes.get(name, 0) + 1
    ordered = sorted(classes, key=lambda n: labels.by_name(n).order)
    summary: dict[str, Any] = {
        "cases": len(scan.cases),
        "excluded_cases": len(scan.excluded),
        "excluded": [vars(e) for e in scan.excluded],
        "classes_present": {name: classes[name] for name in ordered},
        "splits": {name: sum(s == name for s in splits.values()) for name in SPLIT_NAMES},
    }
    if scan.cases:
        summary["spacing_mm"] = {
            axis: _distribution(c.spacing_mm[i] for c in scan.cases) for i, axis in enumerate("xyz")
        }
        summary["size_voxels"] = {
            axis: _distribution(c.shape[i] for c in scan.cases) for i, axis in enumerate("xyz")
        }
    return summary


# --------------------------------------------------------------------------- rows


def _check_source(layout: str, source: Mapping[str, Any]) -> dict[str, Any]:
    if layout not in LAYOUTS:
        raise InvalidInputError(f"Unknown dataset layout {layout!r}; choose one of {LAYOUTS}.")
    if layout == "orthanc":
        query = source.get("orthanc")
        if not isinstance(query, Mapping):
            raise InvalidInputError("An Orthanc dataset needs an 'orthanc' query.")
        studies = query.get("study_uids")
        if studies is not None and not (
            isinstance(studies, list) and all(isinstance(s, str) for s in studies)
        ):
            raise InvalidInputError("'study_uids' must be a list of StudyInstanceUIDs or null.")
        return {"orthanc": {"study_uids": studies}}
    path = source.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInputError(f"A {layout} dataset needs an absolute folder 'path'.")
    return {"path": path}


def create_dataset(
    session: Session,
    *,
    name: str,
    layout: str,
    source: Mapping[str, Any],
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
    project_id: str | None = None,
    created_by: str | None = None,
    enqueue: bool = True,
    app: Any = None,
) -> Dataset:
    """A queued dataset row; its scan is enqueued on the training queue after the commit.

    DatasetConflictError when the name is taken.
    """
    if not re.match(NAME_PATTERN, name):
        raise InvalidInputError(
            f"Dataset name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)."
        )
    checked = _check_source(layout, source)
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise DatasetConflictError(f"A dataset named {name!r} already exists.", name=name)
    dataset = Dataset(
        name=name,
        layout=layout,
        source=checked,
        root=checked.get("path"),
        seed=seed,
        split_fractions=parse_fractions(fractions),
        project_id=project_id,
        created_by=created_by,
        status=JobStatus.QUEUED,
    )
    session.add(dataset)
    session.flush()
    if enqueue:
        enqueue_after_commit(
            session, REGISTER_DATASET, {"dataset_id": dataset.id}, TRAINING_QUEUE, app=app
        )
    return dataset


def find_dataset(session: Session, ref: str) -> Dataset | None:
    """The dataset with this id or name, if any."""
    return session.scalars(
        select(Dataset).where(or_(Dataset.id == ref, Dataset.name == ref))
    ).first()


def get_dataset(session: Session, ref: str) -> Dataset:
    """The dataset with this id or name; NotFoundError otherwise."""
    dataset = find_dataset(session, ref)
    if dataset is None:
        raise NotFoundError(f"No dataset {ref!r}.")
    return dataset


def list_datasets(
    session: Session,
    *,
    project_ids: frozenset[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Dataset]:
    """Datasets, newest first; only those of ``project_ids`` when given (None: every one)."""
    query = select(Dataset)
    if project_ids is not None:
        query = query.where(Dataset.project_id.in_(project_ids))
    query = query.order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
    return list(session.scalars(query))


def record_scan(
    session: Session, dataset: Dataset, scan: ScanResult, *, root: str | None = None
) -> InvalidInputError | None:
    """Store a finished scan's splits and summary; mark the dataset ready (succeeded), or
    failed when no case is usable or none falls in the training split (the dataset cannot be
    trained on). Returns that failure (code ``invalid_input``, every exclusion in its
    details) so that the caller raises it after committing what the scan found.
    """
    splits = assign_splits(
        {c.case_id: scan.layout_splits.get(c.case_id) for c in scan.cases},
        seed=dataset.seed,
        fractions=dataset.split_fractions or DEFAULT_FRACTIONS,
    )
    dataset.summary = summarize(scan, splits)
    dataset.splits = splits
    if root is not None:
        dataset.root = root
    error = None
    if not any(s == "train" for s in splits.values()):
        reasons = "; ".join(e.reason.rstrip(".") for e in scan.excluded[:3])
        error = InvalidInputError(
            f"Dataset {dataset.name!r} has no usable training case"
            + (f" ({reasons})." if reasons else ".")
            + " The summary lists every excluded case and why.",
            excluded=[vars(e) for e in scan.excluded],
        )
        dataset.mark(JobStatus.FAILED, error_code=error.code, error_message=error.message)
    else:
        dataset.mark(JobStatus.SUCCEEDED)
    session.flush()
    return error

"""Scanning a registered dataset, as the training worker's Celery task and for the CLI.

``spinecloud.training.register_dataset`` (queue ``training``, kwargs ``{"dataset_id": ...}``)
runs ``scan_dataset``: it reads the ``Dataset`` row, reads every case of its folder with the
layout readers training uses (``data.layout_sources``), loads and validates each one with the
checks training applies (``data.validate_case``: label map on the CT's grid, canonical ids
only, at least one vertebra labelled), and stores the summary and splits
(``spinecloud_shared.db.datasets.record_scan``). The dataset is then ``succeeded`` (ready to
train on with ``dataset:<name>``) or ``failed`` with code ``invalid_input`` when no case is
usable for training; the summary says why per case either way.

An ``orthanc`` dataset is first converted on the fly: clinicians' corrected SEGs are found in
Orthanc and written as a TotalSegmentator-layout folder under
``<artifact_dir>/datasets/<dataset id>/`` by ``corrections.build_correction_dataset``; its
excluded corrections join the summary's excluded cases (named by SEG digest, no UIDs), and
its cases are split by the registry's seeded rule.

The CLI (``spinecloud datasets register``) runs the same ``scan_dataset`` in-process through
``run_scan``, which records the status exactly as the task does.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spinecloud_shared import labels
from spinecloud_shared.db.datasets import (
    CaseStats,
    ExcludedEntry,
    ScanResult,
    get_dataset,
    record_scan,
)
from spinecloud_shared.db.job_status import row_recorder
from spinecloud_shared.db.models import Dataset, JobStatus
from spinecloud_shared.db.session import session_scope
from spinecloud_shared.errors import InvalidInputError, NotFoundError, SpineCloudError
from spinecloud_shared.jobs import JobOutcome, RetryPolicy, job_task, run_job
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.queue import celery_app
from spinecloud_shared.settings import get_settings
from spinecloud_shared.task_names import REGISTER_DATASET
from spinecloud_training.corrections import build_correction_dataset
from spinecloud_training.data import (
    DataSplit,
    channel_lut,
    layout_sources,
    registered_split,
    unexpected_exclusion,
    validate_case,
)

__all__ = [
    "Progress",
    "built_folder",
    "record_dataset",
    "register_dataset",
    "registered_data",
    "run_scan",
    "scan_dataset",
    "scan_folder",
]

logger = logging.getLogger(__name__)

#: ``progress(stage, done, total)``; total None while unknown.
Progress = Callable[[str, int, int | None], None]

#: Every canonical id is a valid label for the registry (training later keeps its own classes).
_ALL_CLASSES = {0: 0} | {i: label_id for i, label_id in enumerate(labels.ALL_IDS, start=1)}


def _quiet(_stage: str, _done: int, _total: int | None) -> None:
    return None


def scan_folder(root: Path, layout: str, progress: Progress = _quiet) -> ScanResult:
    """Read and validate every case of a dataset folder; usable cases with their grid and
    classes, excluded ones with code and sentence, and the layout's own splits."""
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such dataset folder.", path=str(root))
    progress("listing cases", 0, None)
    _layout, found, unreadable = layout_sources(root, layout)
    result = ScanResult(excluded=[ExcludedEntry(e.case_id, e.code, e.reason) for e in unreadable])
    lut = channel_lut(_ALL_CLASSES)
    for index, (source, split) in enumerate(found):
        progress("reading cases", index, len(found))
        try:
            ct, label_map = source.load()
            canonical = validate_case(source.case_id, ct, label_map, lut)
        except SpineCloudError as exc:
            result.excluded.append(ExcludedEntry(source.case_id, exc.code, exc.message))
            continue
        except Exception as exc:  # a damaged file can raise anything from its reader
            bad = unexpected_exclusion(source.case_id, exc)
            result.excluded.append(ExcludedEntry(bad.case_id, bad.code, bad.reason))
            continue
        present = np.flatnonzero(np.bincount(canonical.ravel(), minlength=1))
        result.cases.append(
            CaseStats(
                case_id=source.case_id,
                spacing_mm=tuple(float(s) for s in ct.spacing_mm),  # type: ignore[arg-type]
                shape=tuple(int(n) for n in ct.shape),  # type: ignore[arg-type]
                label_ids=tuple(int(v) for v in present if v),
            )
        )
        result.layout_splits[source.case_id] = split
    progress("reading cases", len(found), len(found))
    return result


def built_folder(dataset_id: str) -> Path:
    """Where an ``orthanc`` dataset's cases are written."""
    return get_settings().resolved_artifact_dir / "datasets" / dataset_id


def _scan_orthanc(
    dataset_id: str, query: dict[str, Any], fractions: dict[str, float], seed: int,
    progress: Progress,
) -> tuple[Path, ScanResult]:  # fmt: skip
    """Build the corrections folder (afresh on a retry) and scan it."""
    root = built_folder(dataset_id)
    shutil.rmtree(root, ignore_errors=True)
    built = build_correction_dataset(
        OrthancClient.from_settings(),
        root,
        study_uids=query.get("study_uids") or None,
        seed=seed,
        val_fraction=min(0.99, float(fractions.get("val", 0.1))),
        progress=progress,
    )
    scan = scan_folder(root, "totalsegmentator", progress)
    scan.layout_splits = dict.fromkeys(scan.layout_splits)  # the registry's seeded rule
    scan.excluded += [
        ExcludedEntry(f"seg-{e.seg_series}", e.code, e.reason) for e in built.excluded
    ]
    return root, scan


def scan_dataset(dataset_id: str, progress: Progress = _quiet) -> dict[str, Any]:
    """Scan registered dataset ``dataset_id`` and store what was found (module doc); its
    summary. InvalidInputError (after the summary is stored) when nothing is usable."""
    with session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise NotFoundError(f"Dataset {dataset_id} does not exist.")
        layout, source, root = dataset.layout, dict(dataset.source), dataset.root
        fractions, seed = dict(dataset.split_fractions or {}), dataset.seed
    if layout == "orthanc":
        folder, scan = _scan_orthanc(dataset_id, source["orthanc"], fractions, seed, progress)
    else:
        folder = Path(str(root))
        scan = scan_folder(folder, layout, progress)
    with session_scope() as session:
        dataset = session.get_one(Dataset, dataset_id)
        error = record_scan(session, dataset, scan, root=str(folder))
        summary = dict(dataset.summary)
    if error is not None:
        raise error
    return summary


#: Status recorder of the scan: RUNNING counts an attempt; a redelivered scan runs again
#: (it writes the same summary and splits).
record_dataset = row_recorder(Dataset, "Dataset", kept=())


_POLICY = RetryPolicy(max_retries=3)


def run_scan(dataset_id: str, progress: Progress = _quiet) -> JobOutcome:
    """The scan in this process, recorded as the task records it (never raises)."""
    return run_job(
        scan_dataset,
        {"dataset_id": dataset_id, "progress": progress},
        job_id=dataset_id,
        record=record_dataset,
        policy=RetryPolicy(max_retries=0),
    )


@job_task(
    celery_app, REGISTER_DATASET, record=record_dataset, policy=_POLICY, job_id_arg="dataset_id"
)
def register_dataset(dataset_id: str) -> dict[str, Any]:
    """Celery task ``REGISTER_DATASET`` (queue ``training``): see the module doc."""
    return scan_dataset(dataset_id)


def registered_data(ref: str, *, project_id: str | None = None) -> DataSplit:
    """Training and validation sources of registered dataset ``ref`` (name or id), by its
    stored splits ('test' held out); InvalidInputError unless its scan succeeded.

    A training job of a project (``project_id``) sees only that project's datasets: another
    project's (or an unassigned) dataset is NotFoundError, as the gateway answers 404.
    """
    with session_scope() as session:
        dataset = get_dataset(session, ref)
        if project_id is not None and dataset.project_id != project_id:
            raise NotFoundError(f"No dataset {ref!r} in the training's project.")
        if dataset.status is not JobStatus.SUCCEEDED or not dataset.root:
            raise InvalidInputError(
                f"Dataset {dataset.name!r} is {dataset.status.value}, not ready to train on"
                + (f" ({dataset.error_message})" if dataset.error_message else "")
                + ".",
                dataset=dataset.name,
            )
        layout = "totalsegmentator" if dataset.layout == "orthanc" else dataset.layout
        root, splits, name = Path(dataset.root), dict(dataset.splits), dataset.name
    return registered_split(root, layout, splits, name=name)

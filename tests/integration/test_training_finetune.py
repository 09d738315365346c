"""The fine-tuning loop end to end against a real Orthanc.

A private Orthanc receives phantom CT studies by C-STORE (``storescu``, as from a PACS), the
inference worker's AI SEGs (written by ``spinecloud_inference.dicom_seg``) and clinicians'
corrected SEGs written with highdicom from the phantoms' exact labels under a viewer's own
device identity, as OHIF or 3D Slicer would save them. Then:

find the corrections -> TotalSegmentator-layout dataset -> fine-tune the default model a few
iterations -> new bundle version -> served by the inference pipeline -> evaluated before/after
with the metrics service.

The studies:

=====  =========================================================  ===========================
study  what is stored                                             expected
=====  =========================================================  ===========================
A      CT, AI SEG (all wrong: every level "L3"), correction       case, labels = truth
B      CT, older wrong correction, newer true correction          case, newest wins
C      CT, correction coded "Vertebra" + labels vertebrae_Lx      case (label resolves code)
D      CT, correction                                             case
E      CT, AI SEG only                                            nothing (ignored)
F      CT, correction with a spinal-cord segment                  excluded, invalid_labels
G      correction of a CT that is not in Orthanc                  excluded, not_found
=====  =========================================================  ===========================
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from spinecloud_inference.backends import load_model
from spinecloud_inference.dicom_seg import build_dicom_seg
from spinecloud_inference.pipeline import segment_volume
from spinecloud_metrics import api as metrics_api
from spinecloud_shared import labels
from spinecloud_shared.dicom_series import (
    array_to_frames,
    read_dicom_series,
    read_series_datasets,
    to_dicom_grid,
)
from spinecloud_shared.dicom_uids import derive_uid
from spinecloud_shared.dicom_write import encode_dataset, write_ct_series
from spinecloud_shared.layouts import totalsegmentator
from spinecloud_shared.models.manifest import read_manifest
from spinecloud_shared.nifti import read_nifti
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.phantom import PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume
from spinecloud_training.corrections import (
    CorrectionDataset,
    build_correction_dataset,
    uid_digest,
)
from spinecloud_training.finetune import FinetuneRequest, FinetuneResult, finetune
from tests.integration.conftest import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = (
    REPO / "services/inference/src/spinecloud_inference/default_models/spine-segresnet-demo/0.1.0"
)
SPACING_MM = (3.0, 3.0, 3.0)
VIEWER_MANUFACTURER = "Example Viewer Co"
VIEWER_MODEL_NAME = "ExampleViewer"
SPINAL_CORD = ("2748008", "SCT", "Spinal cord")
ITERATIONS = 8


@dataclass(frozen=True)
class Study:
    """A phantom CT series written to disk: its sorted datasets and true labels on its grid."""

    name: str
    files: list[Path]
    datasets: list[Dataset]
    truth: Volume

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)


def make_study(folder: Path, name: str, seed: int, levels: tuple[str, str], run: str) -> Study:
    spec = PhantomSpec(seed=seed, levels=levels, spacing_mm=SPACING_MM, orientation="LPS")
    phantom = generate_phantom(spec)
    files = write_ct_series(phantom.ct, folder / name, key=f"finetune-test:{run}:{name}")
    datasets, _ = read_series_datasets(folder / name)
    truth = to_dicom_grid(phantom.labels)
    assert read_dicom_series(folder / name).same_grid(truth)
    return Study(name, files, datasets, truth)


def clinician_seg(
    study: Study,
    label_map: Volume,
    *,
    key: str,
    content: tuple[str, str] = ("20250102", "090000"),
    generic_code: bool = False,
    extra: tuple[str, str, str] | None = None,
) -> Dataset:
    """A corrected segmentation as a viewer saves it: highdicom, MANUAL segments, the viewer's
    own series and device identity. ``generic_code`` codes every level as "Vertebra" with
    TotalSegmentator-style labels; ``extra`` recodes the last segment as another structure."""
    array = label_map.array
    present = sorted((int(v) for v in np.unique(array) if v), key=lambda i: labels.by_id(i).order)
    to_segment = np.zeros(labels.MAX_ID + 1, dtype=np.uint8)
    descriptions = []
    category = hd.sr.CodedConcept(*labels.CATEGORY_CODE)
    for number, label_id in enumerate(present, start=1):
        to_segment[label_id] = number
        vertebra = labels.by_id(label_id)
        code = (vertebra.snomed_code, labels.CODING_SCHEME, vertebra.snomed_meaning)
        name = vertebra.name
        if extra is not None and number == len(present):
            code, name = extra, extra[2]
        elif generic_code:
            code, name = labels.GENERIC_VERTEBRA_CODE, labels.structure_name(label_id)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=hd.sr.CodedConcept(*code),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=study.datasets,
        pixel_array=array_to_frames(to_segment[array]),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derive_uid(key, "series"),
        series_number=300,
        sop_instance_uid=derive_uid(key, "instance"),
        instance_number=1,
        software_versions="3.1",
        device_serial_number="viewer-1",
        series_description="Corrected vertebrae",
        manufacturer=VIEWER_MANUFACTURER,
        manufacturer_model_name=VIEWER_MODEL_NAME,
    )
    seg.ContentDate, seg.ContentTime = DA(content[0]), TM(content[1])
    return seg


def ai_seg(study: Study, label_map: Volume) -> Dataset:
    """SpineCloud's own AI SEG of the study, exactly as the inference worker writes it."""
    return build_dicom_seg(label_map, study.datasets, model="spine-segresnet-demo@0.1.0")


def all_l3(study: Study) -> Volume:
    """A wrong segmentation: every vertebra labelled L3."""
    return study.truth.with_array(np.where(study.truth.array > 0, 22, 0).astype(np.uint8))


def c_store(orthanc: LocalOrthanc, storescu: str, files: list[Path]) -> None:
    subprocess.run(
        [storescu, "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port), *map(str, files)],
        check=True,
        capture_output=True,
        timeout=120,
    )


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the block: other test sessions share this machine's cores, and
    oversubscribed OpenMP threads stall each other (the setting is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Loop:
    """Everything the end-to-end run produced."""

    studies: dict[str, Study]
    dataset: CorrectionDataset
    result: FinetuneResult
    orthanc: OrthancClient
    work_dir: Path


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    require_tool("Orthanc")
    storescu = require_tool("storescu")
    root = tmp_path_factory.mktemp("finetune")
    # Fixed UIDs are safe in a private Orthanc and keep the split (which case is held out),
    # and so the measured before/after numbers, the same from run to run.
    run = "v1"
    with LocalOrthanc(root / "orthanc") as server:
        client = OrthancClient(server.url, server.username, server.password)
        specs = {
            "A": (31, ("L3", "sacrum")),
            "B": (32, ("L2", "L5")),
            "C": (33, ("L4", "sacrum")),
            "D": (34, ("L3", "L5")),
            "E": (35, ("L4", "sacrum")),
            "F": (36, ("L4", "sacrum")),
            "G": (37, ("L3", "L5")),
        }
        studies = {n: make_study(root / "dicom", n, s, lv, run) for n, (s, lv) in specs.items()}
        for name in "ABCDEF":  # G's CT never reaches Orthanc
            c_store(server, storescu, studies[name].files)
        segs = [
            ai_seg(studies["A"], all_l3(studies["A"])),
            clinician_seg(studies["A"], studies["A"].truth, key=f"{run}:A"),
            clinician_seg(
                studies["B"], all_l3(studies["B"]), key=f"{run}:B-old", content=("20250101", "0800")
            ),
            clinician_seg(studies["B"], studies["B"].truth, key=f"{run}:B-new"),
            clinician_seg(studies["C"], studies["C"].truth, key=f"{run}:C", generic_code=True),
            clinician_seg(studies["D"], studies["D"].truth, key=f"{run}:D"),
            ai_seg(studies["E"], studies["E"].truth),
            clinician_seg(studies["F"], studies["F"].truth, key=f"{run}:F", extra=SPINAL_CORD),
            clinician_seg(studies["G"], studies["G"].truth, key=f"{run}:G"),
        ]
        for seg in segs:  # as a viewer stores them (STOW-RS or REST), not through a PACS
            client.store(encode_dataset(seg))

        dataset = build_correction_dataset(client, root / "dataset", val_fraction=0.25, seed=0)
        request = FinetuneRequest(
            parent=DEFAULT_MODEL,
            dataset=dataset.root,
            output_dir=root / "models" / "spine-segresnet-demo" / "0.1.1",
            work_dir=root / "work",
            iterations=ITERATIONS,
            seed=0,
            device="cpu",
        )
        with one_torch_thread():
            result = finetune(request)
        yield Loop(studies, dataset, result, client, root / "work")


def test_corrections_become_cases_newest_wins_ai_ignored(loop: Loop) -> None:
    by_ct = {c.ct_series: c for c in loop.dataset.cases}
    expected = {uid_digest(loop.studies[n].series_uid): n for n in "ABCD"}
    assert set(by_ct) == set(expected)
    root = loop.dataset.root
    for digest, name in expected.items():
        case_id = by_ct[digest].case_id
        read = totalsegmentator.read_case(root / case_id, case_id, by_ct[digest].split)
        truth = loop.studies[name].truth
        assert read.labels.same_grid(truth)
        # The true labels, not the AI SEG (A) nor the older correction (B): both say "all L3".
        np.testing.assert_array_equal(read.labels.array, truth.array)
    splits = sorted(c.split for c in loop.dataset.cases)
    assert splits == ["train", "train", "train", "val"]
    reasons = {i.reason for i in loop.dataset.ignored}
    assert "SpineCloud's own AI segmentation, not a correction" in reasons
    assert "superseded by a newer correction" in reasons
    assert len(loop.dataset.ignored) == 3  # A's and E's AI SEGs, B's older correction


def test_bad_corrections_are_excluded_with_their_reason(loop: Loop) -> None:
    excluded = {e.ct_series: e for e in loop.dataset.excluded}
    bad_code = excluded[uid_digest(loop.studies["F"].series_uid)]
    assert bad_code.code == "invalid_labels"
    assert "2748008" in bad_code.reason
    missing = excluded[uid_digest(loop.studies["G"].series_uid)]
    assert missing.code == "not_found"
    assert len(excluded) == 2
    written = json.loads((loop.dataset.root / "corrections.json").read_text())
    assert {e["code"] for e in written["excluded"]} == {"invalid_labels", "not_found"}


def test_new_version_records_parent_and_hashed_provenance(loop: Loop) -> None:
    result = loop.result
    assert result.training.completed
    assert result.bundle_dir is not None and result.manifest is not None
    manifest = read_manifest(result.bundle_dir, verify=True)
    assert (manifest.name, manifest.version) == ("spine-segresnet-demo", "0.1.1")
    assert manifest.lineage.parent == "spine-segresnet-demo@0.1.0"
    corrections = manifest.lineage.model_dump()["corrections"]
    assert corrections["cases"] == 4 and corrections["studies"] == 4
    assert sorted(corrections["study_sha256_16"]) == sorted(
        uid_digest(loop.studies[n].study_uid) for n in "ABCD"
    )
    text = (result.bundle_dir / "spinecloud.json").read_text()
    for study in loop.studies.values():
        assert study.study_uid not in text and study.series_uid not in text
        assert str(study.datasets[0].PatientID) not in text
    verdict = manifest.metrics["finetune"]
    assert verdict["evaluator"] == "spinecloud_metrics"
    assert verdict["iterations"] == ITERATIONS
    assert 0.0 <= verdict["before"] <= 1.0 and 0.0 <= verdict["after"] <= 1.0
    assert verdict["delta"] == pytest.approx(verdict["after"] - verdict["before"], abs=1e-3)
    assert verdict["not_worse"] == (verdict["delta"] >= -verdict["margin"])
    assert (manifest.metrics["val_dice_mean"], manifest.metrics["val_cases"]) == (
        verdict["after"],
        1,
    )
    print("fine-tuning verdict:", json.dumps(verdict))


def test_new_version_is_served_and_evaluated(loop: Loop) -> None:
    assert loop.result.bundle_dir is not None
    val = next(c for c in loop.dataset.cases if c.split == "val")
    name = next(n for n in "ABCD" if uid_digest(loop.studies[n].series_uid) == val.ct_series)
    ct = read_dicom_series(
        loop.orthanc.series_files(loop.orthanc.find_series(loop.studies[name].series_uid))
    )
    backend = load_model(loop.result.bundle_dir, device="cpu")
    assert backend.manifest.version == "0.1.1"
    with one_torch_thread():
        served = segment_volume(ct, backend)
    assert served.labels.same_grid(ct)
    assert np.any(served.labels.array)
    scored = metrics_api.evaluate_volumes(served.labels, loop.studies[name].truth, case_id=name)
    mean_dice = scored.summary()["mean_dice"]
    assert isinstance(mean_dice, float) and 0.0 <= mean_dice <= 1.0
    # The loop's own "after" prediction of this case lies on the same CT grid.
    after = read_nifti(loop.work_dir / "evaluation" / "after" / f"{val.case_id}.nii.gz")
    assert after.same_grid(ct)

"""Pure logic of the fine-tuning loop: which SEGs are corrections, segment codes, splits,
versions, the parent's preset, and the SEG reader on in-memory phantom series."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from spinecloud_shared import labels
from spinecloud_shared.dicom_seg_read import SEG_MANUFACTURER, SEG_MODEL_NAME, segment_canonical_id
from spinecloud_shared.dicom_series import read_dicom_series, read_series_datasets, to_dicom_grid
from spinecloud_shared.dicom_write import write_ct_series
from spinecloud_shared.errors import (
    DicomInputError,
    GeometryMismatchError,
    InvalidInputError,
    LabelError,
)
from spinecloud_shared.models.manifest import read_manifest
from spinecloud_shared.phantom import PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume
from spinecloud_training.corrections import (
    SegCandidate,
    assign_splits,
    candidate_from_header,
    is_spinecloud_output,
    read_correction_seg,
    select_corrections,
)
from spinecloud_training.finetune import (
    FinetuneRequest,
    _case_dice,
    bump_version,
    finetune_preset,
    parent_preset,
)
from spinecloud_training.presets import Scheduler

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = (
    REPO / "services/inference/src/spinecloud_inference/default_models/spine-segresnet-demo/0.1.0"
)


def candidate(
    seg: str,
    ct: str | tuple[str, ...] = "1.2.3",
    *,
    when: str = "20250101120000.000000",
    manufacturer: str = "Viewer",
    model: str = "Edit",
) -> SegCandidate:
    refs = (ct,) if isinstance(ct, str) else ct
    return SegCandidate(f"id-{seg}", "9.9", seg, f"{seg}.1", refs, manufacturer, model, when)


# --------------------------------------------------------------------------- selection


def test_spinecloud_output_is_ignored_and_newest_correction_wins() -> None:
    ai = candidate("1.1", manufacturer=SEG_MANUFACTURER, model=SEG_MODEL_NAME)
    old = candidate("1.2", when="20250101080000.000000")
    new = candidate("1.3", when="20250102080000.000000")
    other_ct = candidate("1.4", ct="4.5.6")
    corrections, ignored = select_corrections([old, ai, new, other_ct])
    assert [(c.ct_series_uid, c.seg.series_instance_uid) for c in corrections] == [
        ("1.2.3", "1.3"),
        ("4.5.6", "1.4"),
    ]
    assert corrections[0].superseded == (old,)
    assert sorted(i.reason for i in ignored) == [
        "SpineCloud's own AI segmentation, not a correction",
        "superseded by a newer correction",
    ]


def test_same_manufacturer_other_model_is_a_correction() -> None:
    edited = candidate("1.5", manufacturer=SEG_MANUFACTURER, model="OHIF")
    assert not is_spinecloud_output(edited)
    corrections, _ = select_corrections([edited])
    assert len(corrections) == 1


def test_seg_on_several_series_is_ignored() -> None:
    corrections, ignored = select_corrections([candidate("1.6", ct=("1.2.3", "4.5.6"))])
    assert corrections == []
    assert "references 2 series" in ignored[0].reason


def test_ties_are_broken_by_series_uid() -> None:
    a, b = candidate("1.8"), candidate("1.9")
    for order in ([a, b], [b, a]):
        corrections, _ = select_corrections(order)
        assert corrections[0].seg.series_instance_uid == "1.9"


def test_header_dates_fall_back_and_sort() -> None:
    ds = Dataset()
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.StudyInstanceUID = "1.1", "1.1.1", "2.2"
    ds.SeriesDate, ds.SeriesTime = "20240102", "0930"
    item = Dataset()
    item.SeriesInstanceUID = "3.3"
    ds.ReferencedSeriesSequence = [item]
    found = candidate_from_header("x", ds)
    assert found.content_datetime == "20240102093000.000000"
    assert found.referenced_series_uids == ("3.3",)
    ds.ContentDate, ds.ContentTime = "20240103", "101112.5"
    assert candidate_from_header("x", ds).content_datetime == "20240103101112.500000"
    assert candidate_from_header("x", Dataset()).content_datetime == ""


# --------------------------------------------------------------------------- segment codes


@pytest.mark.parametrize("vertebra", [v for v in labels.VERTEBRAE if not v.transitional])
def test_snomed_codes_map_to_canonical_ids(vertebra: labels.Vertebra) -> None:
    assert segment_canonical_id(vertebra.snomed_code, "SCT", "anything") == vertebra.id
    assert segment_canonical_id(vertebra.snomed_code, "SRT", "") == vertebra.id


@pytest.mark.parametrize(
    ("label", "expected"),
    [("T13", 28), ("L6", 25), ("l3", 22), ("vertebrae_L3", 22), (" sacrum ", 26)],
)
def test_generic_vertebra_code_resolves_by_label(label: str, expected: int) -> None:
    assert segment_canonical_id(labels.GENERIC_VERTEBRA_CODE[0], "SCT", label) == expected


@pytest.mark.parametrize(
    ("code", "scheme", "label", "needle"),
    [
        ("2748008", "SCT", "Spinal cord", "2748008"),
        ("51282000", "SCT", "Vertebra 1", "names no level"),
        ("T-11501", "FMA", "L3", "not SNOMED-CT"),
    ],
)
def test_unknown_codes_are_refused(code: str, scheme: str, label: str, needle: str) -> None:
    with pytest.raises(LabelError, match=needle):
        segment_canonical_id(code, scheme, label)


# --------------------------------------------------------------------------- splits


@given(st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=40), st.integers(0, 9))
def test_splits_are_deterministic_and_keep_a_training_case(keys: list[str], seed: int) -> None:
    splits = assign_splits(keys, val_fraction=0.25, seed=seed)
    assert splits == assign_splits(list(reversed(keys)), val_fraction=0.25, seed=seed)
    n_val = sum(s == "val" for s in splits.values())
    if len(keys) >= 2:
        assert 1 <= n_val <= len(keys) - 1
    else:
        assert n_val == 0


def test_split_fraction_is_checked() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        assign_splits(["a"], val_fraction=1.0)


# --------------------------------------------------------------------------- versions, preset


@pytest.mark.parametrize(
    ("version", "bumped"), [("0.1.0", "0.1.1"), ("2.10.9", "2.10.10"), ("1.0.0-rc1", "1.0.1")]
)
def test_bump_version(version: str, bumped: str) -> None:
    assert bump_version(version) == bumped


def test_bump_version_refuses_non_semver() -> None:
    with pytest.raises(InvalidInputError, match="--version"):
        bump_version("latest")


def test_parent_preset_of_the_default_model_fits_its_weights(tmp_path: Path) -> None:
    manifest = read_manifest(DEFAULT_MODEL)
    preset = parent_preset(DEFAULT_MODEL, manifest)
    assert preset.network.init_filters == 8
    assert preset.spacing_mm == manifest.target_spacing_mm
    assert preset.patch_size == manifest.patch_size
    request = FinetuneRequest(
        parent=DEFAULT_MODEL, dataset=tmp_path, output_dir=tmp_path / "out", iterations=7
    )
    tuned = finetune_preset(preset, request)
    assert tuned.learning_rate == pytest.approx(preset.learning_rate * 0.1)
    assert tuned.scheduler is Scheduler.CONSTANT
    assert (tuned.iterations, tuned.val_every) == (7, 7)


def test_case_dice_counts_missed_classes_as_zero() -> None:
    ref = np.array([0, 1, 1, 2, 2])
    assert _case_dice(ref, ref) == pytest.approx(1.0)
    assert _case_dice(np.array([0, 1, 1, 0, 0]), ref) == pytest.approx(0.5)
    assert _case_dice(ref, np.zeros(5)) is None


# --------------------------------------------------------------------------- the SEG reader


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, list[Dataset], Volume]:
    folder = tmp_path_factory.mktemp("seg-reader")
    spec = PhantomSpec(seed=5, levels=("L3", "L5"), spacing_mm=(3.0, 3.0, 3.0), orientation="PIR")
    phantom = generate_phantom(spec)
    write_ct_series(phantom.ct, folder, key="finetune-unit-seg-reader")
    datasets, _ = read_series_datasets(folder)
    return read_dicom_series(folder), datasets, to_dicom_grid(phantom.labels)


def viewer_seg(datasets: list[Dataset], label_map: Volume, *, generic: bool = False) -> Dataset:
    """A SEG as a viewer writes it (own identity, MANUAL segments)."""
    present = [int(v) for v in np.unique(label_map.array) if v]
    table = np.zeros(labels.MAX_ID + 1, dtype=np.uint8)
    descriptions = []
    for number, label_id in enumerate(present, start=1):
        table[label_id] = number
        vertebra = labels.by_id(label_id)
        code = (
            labels.GENERIC_VERTEBRA_CODE
            if generic
            else (vertebra.snomed_code, labels.CODING_SCHEME, vertebra.snomed_meaning)
        )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=vertebra.name,
                segmented_property_category=hd.sr.CodedConcept(*labels.CATEGORY_CODE),
                segmented_property_type=hd.sr.CodedConcept(*code),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    from spinecloud_shared.dicom_series import array_to_frames

    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=array_to_frames(table[label_map.array]),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=301,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Viewer",
        manufacturer_model_name="Edit",
        software_versions="1",
        device_serial_number="1",
    )


@pytest.mark.parametrize("generic", [False, True])
def test_reader_puts_a_viewer_seg_on_the_ct_grid(
    series: tuple[Volume, list[Dataset], Volume], generic: bool
) -> None:
    ct, datasets, truth = series
    read = read_correction_seg(viewer_seg(datasets, truth, generic=generic), ct)
    assert read.same_grid(ct)
    np.testing.assert_array_equal(read.array, truth.array)


def test_reader_refuses_a_seg_drawn_on_other_images(
    series: tuple[Volume, list[Dataset], Volume], tmp_path: Path
) -> None:
    ct, _, _ = series
    other = generate_phantom(
        PhantomSpec(seed=6, levels=("L3", "L5"), spacing_mm=(3.0, 3.0, 3.0), orientation="PIR")
    )
    write_ct_series(other.ct, tmp_path, key="finetune-unit-other-ct")
    other_datasets, _ = read_series_datasets(tmp_path)
    seg = viewer_seg(other_datasets, to_dicom_grid(other.labels))
    with pytest.raises(GeometryMismatchError):
        read_correction_seg(seg, ct)


def test_reader_refuses_what_is_not_a_seg(series: tuple[Volume, list[Dataset], Volume]) -> None:
    ct, datasets, _ = series
    with pytest.raises(DicomInputError, match="not a readable DICOM-SEG"):
        read_correction_seg(datasets[0], ct)

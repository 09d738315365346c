"""SegResNet training on CPU with a tiny configuration: phantoms, dataset layouts, the bundle
contract, resume after cancellation, and bad cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandFlipd
from typer.testing import CliRunner

from spinecloud_shared import labels
from spinecloud_shared.errors import InvalidInputError
from spinecloud_shared.layouts import write_totalsegmentator, write_verse
from spinecloud_shared.models.manifest import read_manifest
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume
from spinecloud_training import cli
from spinecloud_training.data import (
    DEFAULT_CHANNELS,
    DataSplit,
    layout_split,
    phantom_split,
    random_transforms,
)
from spinecloud_training.presets import DEMO, PAPER, NetworkConfig
from spinecloud_training.segresnet import (
    CHECKPOINT_FILE,
    Phase,
    TrainingProgress,
    TrainingResult,
    TrainRequest,
    train_segresnet,
)

TINY = DEMO.with_overrides(
    network=NetworkConfig(init_filters=4, norm_groups=4),
    spacing_mm=(4.0, 4.0, 4.0),
    patch_size=(32, 32, 32),
    num_samples=1,
    iterations=6,
    val_every=6,
    checkpoint_every=3,
    sw_batch_size=8,
)


def _phantoms(count: int) -> list[Phantom]:
    return [
        generate_phantom(PhantomSpec(seed=seed, spacing_mm=(4.0, 4.0, 4.0), run_length=(4, 6)))
        for seed in range(count)
    ]


def _train(data: DataSplit, tmp_path: Path, **kwargs: object) -> TrainingResult:
    request = TrainRequest(
        preset=TINY,
        data=data,
        output_dir=tmp_path / "bundle",
        work_dir=tmp_path / "work",
        name="tiny-segresnet",
        command="pytest tiny",
        **kwargs,  # type: ignore[arg-type]
    )
    return train_segresnet(request)


def _check_bundle(folder: Path) -> None:
    manifest = read_manifest(folder, verify=True)
    assert manifest.backend == "monai_bundle"
    assert manifest.labels == DEFAULT_CHANNELS
    assert manifest.labels[25] == labels.by_name("sacrum").id
    assert manifest.target_spacing_mm == (4.0, 4.0, 4.0)
    assert manifest.patch_size == (32, 32, 32)
    assert manifest.intensity.window_hu == (-1000.0, 2000.0)
    assert manifest.lineage.command == "pytest tiny"
    assert "val_dice_per_class" in manifest.metrics
    metadata = json.loads((folder / "configs/metadata.json").read_text())
    assert {"version", "monai_version", "pytorch_version", "task", "description"} <= set(metadata)
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 26
    parser = ConfigParser()
    parser.read_config(str(folder / "configs/inference.json"))
    assert parser["network_def"]["_target_"] == "monai.networks.nets.SegResNet"
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(folder / "models/model.pt", weights_only=True))
    with torch.no_grad():
        out = network.eval()(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 26, 32, 32, 32)


def test_presets_follow_the_paper_and_demo_is_small() -> None:
    assert PAPER.network == NetworkConfig(
        init_filters=32, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2
    )
    assert (PAPER.spacing_mm, PAPER.patch_size) == ((1.5,) * 3, (96, 96, 96))
    assert (PAPER.learning_rate, PAPER.epochs, PAPER.batch_size, PAPER.num_samples) == (
        1e-4,
        1000,
        1,
        4,
    )
    assert PAPER.total_iterations(964) == 964_000
    assert DEMO.network.init_filters < PAPER.network.init_filters
    with pytest.raises(ValueError, match="multiple"):
        NetworkConfig(init_filters=4)


def test_flips_never_run_along_the_spine() -> None:
    flips = [t for t in random_transforms(DEMO) if isinstance(t, RandFlipd)]
    assert flips
    assert all(t.flipper.spatial_axis == 0 for t in flips)  # RAS axis 0: left-right


def test_train_on_phantoms_writes_the_contract_bundle(tmp_path: Path) -> None:
    events: list[TrainingProgress] = []
    request = TrainRequest(
        preset=TINY,
        data=phantom_split(3, 1),
        output_dir=tmp_path / "bundle",
        work_dir=tmp_path / "work",
        name="tiny-segresnet",
        command="pytest tiny",
    )
    result = train_segresnet(request, progress=events.append)
    assert result.completed and result.iteration == 6
    assert result.bundle_dir == tmp_path / "bundle"
    _check_bundle(tmp_path / "bundle")
    phases = {e.phase for e in events}
    assert {Phase.LOADING, Phase.TRAINING, Phase.VALIDATING, Phase.FINISHED} <= phases
    assert any(e.val_dice is not None for e in events)
    assert all(e.eta_s is None or e.eta_s >= 0 for e in events)


def test_train_on_a_totalsegmentator_layout_excludes_a_bad_case(tmp_path: Path) -> None:
    root = tmp_path / "totalseg"
    phantoms = _phantoms(4)
    write_totalsegmentator(root, phantoms, splits=["train", "train", "train", "val"])
    bad = root / "s0001/segmentations/vertebrae_L1.nii.gz"
    off_grid = Volume(np.zeros((5, 6, 7), dtype=np.uint8), np.diag([4.0, 4.0, 4.0, 1.0]))
    write_nifti(off_grid, bad)
    data = layout_split(root)
    assert [e.case_id for e in data.excluded] == ["s0001"]
    assert "not on the grid" in data.excluded[0].reason
    result = _train(data, tmp_path)
    assert result.completed
    assert [e.case_id for e in result.excluded] == ["s0001"]
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest.lineage.dataset and "totalsegmentator" in manifest.lineage.dataset
    extra = manifest.lineage.model_extra or {}
    assert extra["excluded_cases"][0]["case_id"] == "s0001"
    assert "s0003" in (manifest.lineage.split or "")


def test_train_on_a_verse_layout(tmp_path: Path) -> None:
    root = tmp_path / "verse"
    write_verse(root, _phantoms(3), splits=["train", "train", "val"])
    result = _train(layout_split(root), tmp_path)
    assert result.completed
    _check_bundle(tmp_path / "bundle")


def test_all_cases_bad_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "totalseg"
    write_totalsegmentator(root, _phantoms(2))
    for case in ("s0000", "s0001"):
        (root / case / "ct.nii.gz").write_bytes(b"not a nifti file")
    data = layout_split(root)
    with pytest.raises(InvalidInputError, match="No usable training case"):
        _train(data, tmp_path)


def _adam_steps(checkpoint: Path) -> set[int]:
    saved = torch.load(checkpoint, weights_only=False)
    return {int(s["step"]) for s in saved["optimizer"]["state"].values()}


def test_cancel_then_resume_continues_the_run(tmp_path: Path) -> None:
    data = phantom_split(3, 1)
    seen: list[int] = []

    def record(event: TrainingProgress) -> None:
        if event.phase is Phase.TRAINING and event.loss is not None:
            seen.append(event.iteration)

    def request(resume: bool) -> TrainRequest:
        return TrainRequest(
            preset=TINY,
            data=data,
            output_dir=tmp_path / "bundle",
            work_dir=tmp_path / "work",
            resume=resume,
        )

    first = train_segresnet(request(False), progress=record, should_cancel=lambda: len(seen) >= 3)
    assert not first.completed and first.iteration == 3
    assert first.bundle_dir is None and not (tmp_path / "bundle").exists()
    checkpoint = tmp_path / "work" / CHECKPOINT_FILE
    assert _adam_steps(checkpoint) == {3}
    seen.clear()
    second = train_segresnet(request(True), progress=record)
    assert second.completed and second.iteration == 6
    assert seen == [4, 5, 6]
    assert _adam_steps(checkpoint) == {6}
    assert read_manifest(tmp_path / "bundle").metrics["iterations"] == 6


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    request = TrainRequest(
        preset=TINY, data=phantom_split(1, 0), output_dir=tmp_path / "b", resume=True
    )
    with pytest.raises(InvalidInputError, match="no checkpoint"):
        train_segresnet(request)


def test_cli_nnunet_backend_reports_a_dataset_without_usable_case(tmp_path: Path) -> None:
    root = tmp_path / "totalseg"
    write_totalsegmentator(root, _phantoms(2))
    for case in ("s0000", "s0001"):
        (root / case / "ct.nii.gz").write_bytes(b"not a nifti file")
    args = ["--backend", "nnunet", "--dataset", str(root), "--output", str(tmp_path / "m")]
    result = CliRunner().invoke(cli.app, args)
    assert isinstance(result.exception, InvalidInputError), result.output
    excluded = result.exception.details["excluded"]
    assert sorted(e["case_id"] for e in excluded) == ["s0000", "s0001"]
    assert not (tmp_path / "m").exists()

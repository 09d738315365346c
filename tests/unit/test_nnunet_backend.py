"""nnU-Net v2 on CPU, end to end on tiny phantoms: raw dataset, plan and preprocess, one short
training with fold "all", export zip, import and serve through the inference pipeline, resume.

The network learns nothing in two iterations; the tests check the plumbing and the geometry
(axis order and spacing as nnU-Net reads the training files, output on the source grid,
canonical ids only, the same output from the folder, the zip and an adopted copy).
"""

from __future__ import annotations

import os

# nnU-Net reads these once, at import: no worker pools on a small CPU machine.
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from spinecloud_inference.backends import clear_model_cache, load_model
from spinecloud_inference.backends.nnunet import (
    NnUNetBackend,
    adopt_model,
    find_trained_model_folder,
    import_model_zip,
    labels_from_dataset_json,
)
from spinecloud_inference.pipeline import segment_volume
from spinecloud_shared import labels
from spinecloud_shared.errors import ModelArtifactError
from spinecloud_shared.models.manifest import (
    MANIFEST_FILE,
    Backend,
    read_manifest,
    write_manifest,
)
from spinecloud_shared.nifti import read_nifti, write_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.settings import get_settings
from spinecloud_shared.volume import Volume
from spinecloud_training.data import CaseSource
from spinecloud_training.nnunet.raw_dataset import write_raw_dataset
from spinecloud_training.nnunet.train import (
    NnUNetFolders,
    TrainSettings,
    export_zip,
    model_manifest,
    nnunet_environment,
    plan_and_preprocess,
    train,
    write_model_manifest,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATASET_ID = 501
LEVELS = ("L4", "sacrum")
ONE_EPOCH = TrainSettings(num_epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1)


@dataclass(frozen=True)
class Trained:
    """The shared training run: its folders, dataset name, model folder and export zip."""

    folders: NnUNetFolders
    dataset_name: str
    model_folder: Path
    zip_path: Path


def _phantom(seed: int, orientation: str = "RAS") -> Phantom:
    spec = PhantomSpec(
        seed=seed,
        levels=LEVELS,
        spacing_mm=(4.0, 4.0, 4.0),
        fov_mm=(120.0, 100.0),
        orientation=orientation,
    )
    return generate_phantom(spec)


def _source(seed: int, orientation: str = "RAS") -> CaseSource:
    def load() -> tuple[Volume, Volume]:
        phantom = _phantom(seed, orientation)
        return phantom.ct, phantom.labels

    return CaseSource(f"phantom-{seed}", load)


def train_tiny_model(work_dir: str) -> None:
    """Four phantoms (one in LPS), planned, preprocessed, trained 1 epoch of 2 iterations.

    Run by the ``trained`` fixture in a fresh interpreter: nnU-Net's process pools and data
    augmentation workers, started from a pytest process that earlier tests left with
    threads of their own (servers, asyncio portals), hung there; a clean process does not.
    """
    torch.set_num_threads(2)
    folders = NnUNetFolders(Path(work_dir))
    ids = sorted({i for seed in range(4) for i in _phantom(seed).level_ids})
    sources = [_source(0), _source(1), _source(2, "LPS"), _source(3)]
    raw = write_raw_dataset(sources, folders.raw, dataset_id=DATASET_ID, canonical_ids=ids)
    plan_and_preprocess(folders, DATASET_ID)
    model_folder = train(folders, raw.name, fold="all", settings=ONE_EPOCH, device="cpu")
    manifest = model_manifest(model_folder, name="tiny-nnunet", version="0.1", folds=["all"])
    write_model_manifest(model_folder, manifest)
    zip_manifest = model_manifest(
        model_folder, name="tiny-nnunet", version="0.1", folds=["all"], root=folders.results
    )
    export_zip(folders, raw.name, folders.work_dir / "tiny.zip", zip_manifest)
    (folders.work_dir / "trained.json").write_text(
        json.dumps({"dataset_name": raw.name, "model_folder": str(model_folder)})
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The tiny model of ``train_tiny_model``, trained in a child interpreter."""
    work_dir = tmp_path_factory.mktemp("nnunet")
    code = (
        "import sys; from tests.unit.test_nnunet_backend import train_tiny_model; "
        "train_tiny_model(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(work_dir)], cwd=REPO, check=True, timeout=900)
    folders = NnUNetFolders(work_dir)
    done = json.loads((work_dir / "trained.json").read_text())
    return Trained(folders, done["dataset_name"], Path(done["model_folder"]), work_dir / "tiny.zip")


def test_raw_dataset_has_consecutive_labels_in_ras(trained: Trained) -> None:
    folder = trained.folders.raw / trained.dataset_name
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["numTraining"] == 4
    assert dataset["file_ending"] == ".nii.gz"
    assert sorted(dataset["labels"].values()) == list(range(len(dataset["labels"])))
    assert dataset["labels"]["sacrum"] == len(dataset["labels"]) - 1
    lps_case = read_nifti(folder / "labelsTr" / "case0002.nii.gz")
    assert lps_case.orientation == "RAS"
    values = np.unique(lps_case.array)
    assert set(values.tolist()) == set(range(len(dataset["labels"])))


def test_raw_dataset_excludes_bad_cases(tmp_path: Path) -> None:
    phantom = _phantom(0)
    bad = phantom.labels.with_array(np.full(phantom.labels.shape, 99, dtype=np.uint8))
    sources = [_source(0), CaseSource("bad", lambda: (phantom.ct, bad))]
    ids = sorted(int(v) for v in np.unique(phantom.labels.array) if v)
    raw = write_raw_dataset(sources, tmp_path, dataset_id=7, canonical_ids=ids)
    assert list(raw.cases.values()) == ["phantom-0"]
    assert [e.case_id for e in raw.excluded] == ["bad"]
    assert raw.label_map == {0: 0, **{n: i for n, i in enumerate(ids, start=1)}}


def test_nnunet_reads_training_files_as_the_backend_feeds_it(trained: Trained) -> None:
    """SimpleITK's view of a training file is the backend's transposition of the RAS array."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    image = trained.folders.raw / trained.dataset_name / "imagesTr" / "case0002_0000.nii.gz"
    data, properties = SimpleITKIO().read_images([str(image)])
    ras = _phantom(2, "LPS").ct.reoriented("RAS")
    np.testing.assert_array_equal(data[0], ras.array.transpose(2, 1, 0))
    assert tuple(properties["spacing"]) == tuple(reversed(ras.spacing_mm))


def test_backend_matches_nnunet_own_file_path(trained: Trained, tmp_path: Path) -> None:
    """nnU-Net reading a RAS NIfTI and writing its label file puts labels where we do."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    ct = _phantom(13).ct
    image = write_nifti(ct, tmp_path / "case_0000.nii.gz")
    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(trained.model_folder), ("all",))
    data, properties = SimpleITKIO().read_images([str(image)])
    predictor.predict_single_npy_array(data, properties, None, str(tmp_path / "nnunet"))
    theirs = read_nifti(tmp_path / "nnunet.nii.gz")
    backend = load_model(trained.model_folder, device="cpu")
    ours = backend.predict(ct.array.astype(np.float32)[None])
    assert theirs.same_grid(ct)
    np.testing.assert_array_equal(theirs.array, ours)
    assert len(np.unique(ours)) > 1  # an untrained network, but not a constant one


def test_unknown_trainer_class_falls_back_to_the_plans_network(
    trained: Trained, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trainer nnU-Net cannot import here (variants need timm) still serves its weights."""
    copy = tmp_path / "nnUNetTrainerVariant__nnUNetPlans__3d_fullres"
    shutil.copytree(trained.model_folder, copy)
    checkpoint_path = copy / "fold_all" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "SpineCloudTrainerThatDoesNotExist"
    torch.save(checkpoint, checkpoint_path)
    write_model_manifest(copy, model_manifest(copy, name="variant", version="1", folds=["all"]))
    ct = _phantom(14).ct
    expected = segment_volume(ct, trained.model_folder, device="cpu").labels.array
    np.testing.assert_array_equal(segment_volume(ct, copy, device="cpu").labels.array, expected)
    assert "using the base nnUNetTrainer" in caplog.text


def test_manifest_follows_the_plans(trained: Trained) -> None:
    manifest = read_manifest(trained.model_folder)
    plans = json.loads((trained.model_folder / "plans.json").read_text())
    spacing_zyx = plans["configurations"]["3d_fullres"]["spacing"]
    assert manifest.backend is Backend.NNUNET
    assert manifest.orientation == "RAS"
    assert manifest.intensity.normalisation == "none"
    assert manifest.target_spacing_mm == pytest.approx(tuple(reversed(spacing_zyx)))
    assert set(manifest.labels.values()) == {0, 22, 23, 24, 26}
    assert list(manifest.weights_sha256) == ["fold_all/checkpoint_final.pth"]


def test_zip_import_serves_on_the_source_grid(trained: Trained, tmp_path: Path) -> None:
    folder = import_model_zip(trained.zip_path, tmp_path / "tiny-nnunet" / "0.1")
    ct = _phantom(10, "LPS").ct
    result = segment_volume(ct, folder, device="cpu")
    assert result.labels.same_grid(ct)
    assert result.labels.array.dtype == np.uint8
    present = set(np.unique(result.labels.array).tolist()) - {0}
    assert present <= set(read_manifest(folder).labels.values()) & set(labels.ALL_IDS)
    assert isinstance(load_model(folder, device="cpu"), NnUNetBackend)


def test_folder_zip_and_adopted_copy_give_the_same_output(trained: Trained, tmp_path: Path) -> None:
    imported = import_model_zip(trained.zip_path, tmp_path / "from-zip")
    adopted = adopt_model(
        trained.folders.results, tmp_path / "adopted", name="adopted", version="1"
    )
    assert find_trained_model_folder(adopted).name.endswith("__3d_fullres")
    ct = _phantom(11).ct
    outputs = [
        segment_volume(ct, folder, device="cpu").labels.array
        for folder in (trained.model_folder, imported, adopted)
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])
    clear_model_cache()


def test_artefact_holding_the_zip_serves_it(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINECLOUD_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    folder = tmp_path / "zipped"
    folder.mkdir()
    shutil.copy(trained.zip_path, folder / "model.zip")
    manifest = read_manifest(trained.model_folder)
    write_manifest(manifest.model_copy(update={"weights_sha256": {"model.zip": ""}}), folder)
    ct = _phantom(15).ct
    expected = segment_volume(ct, trained.model_folder, device="cpu").labels.array
    np.testing.assert_array_equal(segment_volume(ct, folder, device="cpu").labels.array, expected)
    assert any((tmp_path / "data" / "cache" / "nnunet").iterdir())
    get_settings.cache_clear()


def test_plain_nnunet_export_zip_is_adopted_and_served_as_manifest_plus_zip(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nnU-Net's own export zip (``nnUNetv2_export_model_to_zip``, no spinecloud.json):
    adopted into a folder, or kept as ``spinecloud.json`` beside ``model.zip``; both serve
    exactly what the trained folder serves."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    monkeypatch.setenv("SPINECLOUD_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    plain = tmp_path / "plain.zip"
    with nnunet_environment(trained.folders):
        export_pretrained_model(
            trained.dataset_name, str(plain), configurations=("3d_fullres",), folds=("all",)
        )
    with zipfile.ZipFile(plain) as archive:
        assert MANIFEST_FILE not in archive.namelist()
    with pytest.raises(ModelArtifactError, match="adopt_model"):
        import_model_zip(plain, tmp_path / "refused")
    adopted = adopt_model(plain, tmp_path / "adopted", name="plain", version="1")
    artefact = tmp_path / "artefact"
    artefact.mkdir()
    shutil.copy(plain, artefact / "model.zip")
    manifest = read_manifest(adopted).model_copy(update={"weights_sha256": {"model.zip": ""}})
    write_manifest(manifest, artefact)
    assert read_manifest(adopted).labels == read_manifest(trained.model_folder).labels
    ct = _phantom(16, "LPS").ct
    expected = segment_volume(ct, trained.model_folder, device="cpu").labels.array
    for folder in (adopted, artefact):
        served = segment_volume(ct, folder, device="cpu").labels.array
        np.testing.assert_array_equal(served, expected)
    get_settings.cache_clear()


def test_unlisted_checkpoints_are_refused(trained: Trained, tmp_path: Path) -> None:
    copy = tmp_path / "unlisted"
    shutil.copytree(trained.model_folder, copy)
    manifest = read_manifest(copy, verify=False)
    write_manifest(manifest.model_copy(update={"weights_sha256": {}}), copy)
    with pytest.raises(ModelArtifactError, match="not listed"):
        load_model(copy, device="cpu")


def test_output_does_not_depend_on_the_input_orientation(trained: Trained) -> None:
    ras = _phantom(12).ct
    lps = ras.reoriented("LPS")
    from_ras = segment_volume(ras, trained.model_folder, device="cpu").labels
    from_lps = segment_volume(lps, trained.model_folder, device="cpu").labels
    np.testing.assert_array_equal(from_lps.reoriented("RAS").array, from_ras.array)


def test_resume_continues_from_the_checkpoint(trained: Trained, tmp_path: Path) -> None:
    copy = NnUNetFolders(tmp_path / "work")
    shutil.copytree(trained.folders.work_dir, copy.work_dir)
    two_epochs = TrainSettings(num_epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1)
    folder = train(
        copy, trained.dataset_name, settings=two_epochs, continue_training=True, validate=False
    )
    checkpoint = torch.load(
        folder / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False
    )
    assert checkpoint["current_epoch"] == 2
    assert len(checkpoint["logging"]["train_losses"]) == 2


def test_labels_from_totalsegmentator_names() -> None:
    dataset = {"labels": {"background": 0, "sacrum": 1, "vertebrae_S1": 2, "vertebrae_L5": 3}}
    assert labels_from_dataset_json(dataset) == {0: 0, 1: 26, 2: 0, 3: 24}
    dataset = {"labels": {"background": 0, "liver": 1, "L1": 2}}
    assert labels_from_dataset_json(dataset) == {0: 0, 1: 0, 2: 20}


def test_zip_with_paths_outside_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside.txt", "x")
    with pytest.raises(ModelArtifactError, match="outside"):
        import_model_zip(evil, tmp_path / "model")
    assert not (tmp_path / "outside.txt").exists()

"""The inference pipeline on phantoms: tiny real SegResNet bundles, an oracle backend, cleaning,
plausibility findings, refusals, model lookup and the ``segment`` command.

Networks are real MONAI SegResNets with random weights (init_filters 4) in the bundle format
training writes; nothing of torch or MONAI is mocked. The oracle backend is a real
implementation of our ``SegmentationBackend`` protocol that answers with the ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from typer.testing import CliRunner

from spinecloud_inference import cli
from spinecloud_inference.backends import (
    InferenceOptions,
    SegmentationBackend,
    clear_model_cache,
    load_model,
    resolve_model_folder,
)
from spinecloud_inference.backends.monai_bundle import (
    MonaiBundleBackend,
    plan_slabs,
    window_count,
)
from spinecloud_inference.pipeline import SegmentOptions, Stage, segment_volume
from spinecloud_inference.plausibility import FindingCode, check_plausibility
from spinecloud_inference.postprocess import clean_labels
from spinecloud_shared.centroids import centroids_from_labels
from spinecloud_shared.errors import (
    ImageTooSmallError,
    MetalImageError,
    ModelArtifactError,
    ModelNotFoundError,
    NoBodyInImageError,
)
from spinecloud_shared.models.manifest import (
    Backend,
    Manifest,
    ModelState,
    read_manifest,
    write_manifest,
)
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.resample import Interpolation, resample_to_spacing
from spinecloud_shared.volume import Volume

torch.set_num_threads(2)

LEVEL_IDS = (22, 23, 24, 26)  # L3 (partly in view), L4, L5, sacrum
PATCH = (32, 32, 32)


# --------------------------------------------------------------------------- factories


def write_tiny_bundle(
    folder: Path,
    *,
    name: str = "tiny",
    version: str = "0.0.1",
    ids: tuple[int, ...] = LEVEL_IDS,
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0),
    patch: tuple[int, int, int] = PATCH,
    state: ModelState = ModelState.DRAFT,
    seed: int = 0,
) -> Path:
    """A MONAI bundle in the artefact contract: SegResNet(init_filters=4), random weights."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    network_def = {
        "_target_": "monai.networks.nets.SegResNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": len(ids) + 1,
        "init_filters": 4,
        "blocks_down": [1, 2, 2, 4],
        "blocks_up": [1, 1, 1],
        "dropout_prob": 0.2,
        "norm": ["GROUP", {"num_groups": 2}],
    }
    config = {"imports": ["$import torch"], "network_def": network_def}
    (folder / "configs/inference.json").write_text(json.dumps(config))
    metadata = {
        "version": version,
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "task": "vertebra segmentation (test)",
        "description": "tiny random SegResNet",
        "network_data_format": {"inputs": {}, "outputs": {}},
    }
    (folder / "configs/metadata.json").write_text(json.dumps(metadata))
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    network = ConfigParser({"network_def": network_def}).get_parsed_content("network_def")
    torch.save(network.state_dict(), folder / "models/model.pt")
    manifest = Manifest(
        name=name,
        version=version,
        backend=Backend.MONAI_BUNDLE,
        labels={0: 0, **{channel + 1: i for channel, i in enumerate(ids)}},
        target_spacing_mm=spacing_mm,
        patch_size=patch,
        state=state,
        weights_sha256={"models/model.pt": ""},
    )
    write_manifest(manifest, folder)
    return folder


def lumbar_phantom(orientation: str = "RAS", **kwargs: Any) -> Phantom:
    spec = PhantomSpec(
        seed=3,
        levels=("L4", "sacrum"),
        spacing_mm=kwargs.pop("spacing_mm", (3.0, 3.0, 3.0)),
        orientation=orientation,
        fov_mm=(100.0, 100.0),
        **kwargs,
    )
    return generate_phantom(spec)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("models") / "tiny" / "0.0.1")


class OracleBackend:
    """``SegmentationBackend`` that returns the one-hot ground truth on the model's grid."""

    def __init__(self, manifest: Manifest, truth: Volume) -> None:
        self._manifest = manifest
        grid = truth.reoriented(manifest.orientation)
        self.truth = resample_to_spacing(
            grid, manifest.target_spacing_mm, interpolation=Interpolation.NEAREST
        ).array
        self.channel_of = {target: channel for channel, target in manifest.labels.items()}

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def num_channels(self) -> int:
        return len(self._manifest.labels)

    def predict(
        self, image: npt.NDArray[np.float32], *, progress: Any = None
    ) -> npt.NDArray[np.float32]:
        assert image.shape[1:] == self.truth.shape, "image is not on the model grid"
        assert image.dtype == np.float32 and 0.0 <= image.min() <= image.max() <= 1.0
        scores = np.zeros((self.num_channels, *self.truth.shape), dtype=np.float32)
        for target, channel in self.channel_of.items():
            scores[channel][self.truth == target] = 1.0
        return scores


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


# --------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_tiny_bundle_gives_canonical_labels_on_the_source_grid(
    bundle: Path, orientation: str
) -> None:
    phantom = lumbar_phantom(orientation)
    stages: list[tuple[Stage, float]] = []
    result = segment_volume(
        phantom.ct, bundle, device="cpu", progress=lambda s, f: stages.append((s, f))
    )
    assert result.labels.shape == phantom.ct.shape
    assert np.array_equal(result.labels.affine_ras, phantom.ct.affine_ras)
    assert result.labels.array.dtype == np.uint8
    assert set(np.unique(result.labels.array)) <= {0, *LEVEL_IDS}
    assert result.model_ref == "tiny@0.0.1" and result.device == "cpu"
    for stage in ("preprocess", "forward", "postprocess", "total"):
        assert result.timings_s[stage] >= 0.0
    assert {s for s, _ in stages} >= {Stage.PREPROCESS, Stage.FORWARD, Stage.POSTPROCESS}
    assert (Stage.FORWARD, 1.0) in stages


def test_same_world_result_in_every_orientation(bundle: Path) -> None:
    """The tiny net sees the same model-grid image whatever the source orientation."""
    results = [
        segment_volume(lumbar_phantom(o).ct, bundle).labels.reoriented("RAS")
        for o in ("RAS", "PIR")
    ]
    assert np.array_equal(results[0].array, results[1].array)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_oracle_backend_recovers_ground_truth_on_source_grid(orientation: str) -> None:
    """Preprocessing, resampling to 1.5 mm and back, and cleaning keep the ground truth.

    Source spacing (1.7, 2.3, 2.9) mm has no integer ratio to 1.5 mm, so the nearest-neighbour
    round trip moves a few boundary voxels. The bound is Dice > 0.97 per class: the levels
    inside the field of view come back exactly (Dice 1.0 measured), and L3, cut by the top of
    the field of view, is in two pieces there, of which cleaning keeps the larger (0.975).
    """
    phantom = lumbar_phantom(orientation, spacing_mm=(1.7, 2.3, 2.9))
    manifest = Manifest(
        name="oracle",
        version="1",
        backend=Backend.MONAI_BUNDLE,
        labels={0: 0, 1: 26, 2: 24, 3: 23, 4: 22},  # channels in another order than ids
        target_spacing_mm=(1.5, 1.5, 1.5),
        patch_size=(96, 96, 96),
    )
    oracle = OracleBackend(manifest, phantom.labels)
    assert isinstance(oracle, SegmentationBackend)
    result = segment_volume(phantom.ct, oracle)
    assert result.labels.same_grid(phantom.labels)
    truth, predicted = phantom.labels.array, result.labels.array
    for label in phantom.level_ids:
        assert dice(truth == label, predicted == label) > 0.97, label
    assert [level.label for level in result.levels] == list(phantom.level_ids)
    assert not [f for f in result.findings if f.code is not FindingCode.VOLUME_TOO_SMALL]


def test_slabs_give_the_whole_volume_result(bundle: Path) -> None:
    backend = load_model(bundle, device="cpu", options=InferenceOptions(sw_batch_size=3))
    patch = (16, 16, 16)
    small = backend.manifest.model_copy(update={"patch_size": patch})
    image = np.random.default_rng(0).random((1, 16, 16, 80), dtype=np.float32)
    outputs = []
    for max_bytes in (1 << 30, 48 * 4 * 5 * 16 * 16):
        options = InferenceOptions(sw_batch_size=3, max_stitch_bytes=max_bytes)
        slabs = plan_slabs(
            (16, 16, 80), patch, overlap=0.5, num_channels=5, max_stitch_bytes=max_bytes
        )
        assert isinstance(backend, MonaiBundleBackend)
        twin = MonaiBundleBackend(
            network=backend.network,
            manifest=small,
            device="cpu",
            num_channels=5,
            options=options,
        )
        outputs.append((len(slabs), twin.predict(image)))
    (whole_count, whole), (slab_count, slabbed) = outputs
    assert whole_count == 1 and slab_count >= 3
    assert np.mean(whole == slabbed) > 0.999


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_bundle_gives_the_state_dict_result(bundle: Path, tmp_path: Path) -> None:
    reference = load_model(bundle, device="cpu")
    assert isinstance(reference, MonaiBundleBackend)
    folder = write_tiny_bundle(tmp_path / "ts")
    torch.jit.script(reference.network).save(str(folder / "models/model.ts"))
    (folder / "models/model.pt").unlink()
    manifest = read_manifest(folder, verify=False)
    write_manifest(manifest.model_copy(update={"weights_sha256": {"models/model.ts": ""}}), folder)
    image = np.random.default_rng(1).random((1, 32, 32, 40), dtype=np.float32)
    scripted = load_model(folder, device="cpu")
    assert np.array_equal(scripted.predict(image), reference.predict(image))


def test_weights_not_covered_by_the_manifest_are_refused(tmp_path: Path) -> None:
    folder = write_tiny_bundle(tmp_path / "tiny")
    manifest = read_manifest(folder)
    write_manifest(manifest.model_copy(update={"weights_sha256": {}}), folder)
    with pytest.raises(ModelArtifactError, match="not listed"):
        load_model(folder)


@pytest.mark.parametrize("shape", [(20, 18, 80), (8, 40, 33), (16, 17, 96)])
def test_window_count_matches_monai(shape: tuple[int, int, int]) -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    patch = (16, 16, 16)
    padded = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    interval = _get_scan_interval(padded, patch, 3, (0.5, 0.5, 0.5))
    assert window_count(shape, patch, 0.5) == len(dense_patch_slices(padded, patch, interval))


# --------------------------------------------------------------------------- cleaning


def _grid(shape: tuple[int, int, int] = (40, 40, 60), spacing: float = 2.0) -> Volume:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return Volume(np.zeros(shape, dtype=np.uint8), affine)


def test_largest_component_kept_and_fragments_removed() -> None:
    grid = _grid()
    array = grid.array.copy()
    array[5:15, 5:15, 5:15] = 20  # 1000 voxels = 8 ml
    array[25:28, 25:28, 25:28] = 20  # 27 voxels: a second, smaller piece of L1
    array[30, 30, 30] = 21  # L2: one voxel (0.008 ml), a fragment
    array[15, 15, 15] = 20  # touches the big piece by a corner only (26-connectivity)
    cleaned = clean_labels(grid.with_array(array), min_fragment_ml=0.5)
    out = cleaned.labels.array
    assert np.count_nonzero(out == 20) == 1001
    assert not np.any(out == 21) and not np.any(out[25:28, 25:28, 25:28])
    assert cleaned.components[20].sizes_ml == pytest.approx((8.008, 0.216))
    assert cleaned.components[21].kept_ml == 0.0
    assert not cleaned.components[20].touches_border
    assert array[30, 30, 30] == 21  # the input was not modified


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "SAL"])
def test_equal_pieces_resolve_to_the_same_place_in_every_orientation(codes: str) -> None:
    # Two pieces of L1 with the same voxel count: the superior one (larger k, +z) is kept,
    # whichever order the array's axes run in. The first one in scan order is the inferior.
    grid = _grid()
    array = grid.array.copy()
    array[5:10, 5:10, 5:10] = 20
    array[20:25, 20:25, 40:45] = 20
    ras = grid.with_array(array)
    cleaned = clean_labels(ras.reoriented(codes)).labels.reoriented("RAS").array
    assert np.count_nonzero(cleaned == 20) == 125
    assert np.all(cleaned[20:25, 20:25, 40:45] == 20)
    assert not np.any(cleaned[5:10, 5:10, 5:10])


def _levels(grid: Volume, boxes: dict[int, tuple[int, int]]) -> Volume:
    """Slabs of label along z (k), each a cube across (10..30, 10..30)."""
    array = grid.array.copy()
    for label, (k0, k1) in boxes.items():
        array[10:30, 10:30, k0:k1] = label
    return grid.with_array(array)


def _findings(label_map: Volume) -> dict[FindingCode, list[tuple[str, ...]]]:
    cleaned = clean_labels(label_map)
    found = check_plausibility(cleaned.components, centroids_from_labels(cleaned.labels))
    out: dict[FindingCode, list[tuple[str, ...]]] = {}
    for finding in found:
        out.setdefault(finding.code, []).append(finding.levels)
        assert finding.message
        assert finding.to_dict()["code"] == finding.code.value
    return out


def test_plausible_lumbar_spine_has_no_findings() -> None:
    # 20 x 20 x 6 voxels of 8 mm³ = 19.2 ml per level; +z is superior, L1 on top.
    grid = _grid()
    assert _findings(_levels(grid, {20: (44, 50), 21: (36, 42), 22: (28, 34)})) == {}


def test_order_inversion_skipped_duplicated_and_oversize_are_reported() -> None:
    grid = _grid()
    inverted = _findings(_levels(grid, {20: (20, 26), 21: (36, 42)}))
    assert inverted[FindingCode.ORDER_INVERTED] == [("L1", "L2")]
    skipped = _findings(_levels(grid, {20: (44, 50), 22: (28, 34), 24: (10, 16)}))
    assert skipped[FindingCode.SKIPPED_LEVEL] == [("L2", "L4")]
    duplicated = _findings(_levels(grid, {20: (44, 50), 21: (36, 42), 22: (28, 34)}))
    assert duplicated == {}
    twice = _levels(grid, {20: (44, 50), 21: (36, 42)})
    twice.array[10:30, 10:30, 28:33] = 20  # a second L1 below L2
    found = _findings(twice)
    assert found[FindingCode.DUPLICATED_LEVEL] == [("L1",)]
    big = _findings(_levels(grid, {1: (20, 40)}))  # C1 of 64 ml
    assert big[FindingCode.VOLUME_TOO_LARGE] == [("C1",)]


def test_small_level_reported_only_away_from_the_border() -> None:
    grid = _grid()
    inside = _findings(_levels(grid, {20: (30, 31)}))  # L1 of 3.2 ml
    assert inside[FindingCode.VOLUME_TOO_SMALL] == [("L1",)]
    cut = _findings(_levels(grid, {20: (0, 2)}))  # touches the bottom of the field of view
    assert FindingCode.VOLUME_TOO_SMALL not in cut


# --------------------------------------------------------------------------- refusals


def test_all_air_volume_is_refused(bundle: Path) -> None:
    grid = _grid()
    air = grid.with_array(np.full(grid.shape, -1000, dtype=np.int16))
    with pytest.raises(NoBodyInImageError):
        segment_volume(air, bundle)


def test_all_metal_volume_is_refused(bundle: Path) -> None:
    grid = _grid()
    metal = grid.with_array(np.full(grid.shape, 3071, dtype=np.int16))
    with pytest.raises(MetalImageError):
        segment_volume(metal, bundle)


def test_too_small_volume_is_refused(bundle: Path) -> None:
    thin = lumbar_phantom().ct
    thin = Volume(thin.array[:, :, 30:34], thin.affine_ras)  # 4 slices of 3 mm = 12 mm
    with pytest.raises(ImageTooSmallError, match="16 mm"):
        segment_volume(thin, bundle, options=SegmentOptions())


def test_corrupt_weights_fail_the_digest_check(tmp_path: Path) -> None:
    folder = write_tiny_bundle(tmp_path / "tiny")
    weights = folder / "models/model.pt"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelArtifactError, match="sha256"):
        load_model(folder)


def test_missing_bundle_and_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model("no-such-model", models_dir=tmp_path)
    folder = write_tiny_bundle(tmp_path / "tiny")
    (folder / "configs/inference.json").unlink()
    with pytest.raises(ModelArtifactError, match=r"inference\.json"):
        load_model(folder)


def test_manifest_labels_must_cover_the_network_outputs(tmp_path: Path) -> None:
    folder = write_tiny_bundle(tmp_path / "tiny")
    manifest = read_manifest(folder)
    write_manifest(manifest.model_copy(update={"labels": {0: 0, 1: 22, 2: 23}}), folder)
    with pytest.raises(ModelArtifactError, match=r"channels \[3, 4\]"):
        segment_volume(lumbar_phantom().ct, folder)


def test_python_expressions_in_network_def_are_refused(tmp_path: Path) -> None:
    folder = write_tiny_bundle(tmp_path / "tiny")
    config = json.loads((folder / "configs/inference.json").read_text())
    config["network_def"]["init_filters"] = "$__import__('os').getpid() % 1 + 4"
    (folder / "configs/inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelArtifactError, match="expression"):
        load_model(folder)


# --------------------------------------------------------------------------- lookup, cache


def test_lookup_picks_production_then_highest_version(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for version, state in (("0.9.0", ModelState.PRODUCTION), ("0.10.0", ModelState.DRAFT)):
        write_tiny_bundle(models / "tiny" / version, version=version, state=state)
    assert resolve_model_folder("tiny", models_dir=models).name == "0.9.0"
    assert resolve_model_folder("tiny@0.10.0", models_dir=models).name == "0.10.0"
    write_tiny_bundle(models / "tiny" / "0.11.0", version="0.11.0", state=ModelState.PRODUCTION)
    assert resolve_model_folder("tiny", models_dir=models).name == "0.11.0"
    with pytest.raises(ModelNotFoundError, match=r"tiny@2\.0"):
        resolve_model_folder("tiny@2.0", models_dir=models)


def test_loaded_model_is_kept_until_its_files_change(tmp_path: Path) -> None:
    clear_model_cache()
    folder = write_tiny_bundle(tmp_path / "tiny")
    first = load_model(folder, device="cpu")
    assert load_model(folder, device="cpu") is first
    write_tiny_bundle(folder, seed=1)
    assert load_model(folder, device="cpu") is not first


# --------------------------------------------------------------------------- command line


def _cli_ok(args: list[str]) -> str:
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_segments_a_nifti_file(bundle: Path, tmp_path: Path) -> None:
    phantom = lumbar_phantom("LPS")
    source = write_nifti(phantom.ct, tmp_path / "ct.nii.gz")
    output = _cli_ok([str(source), "-o", str(tmp_path / "out"), "--model", str(bundle)])
    assert (tmp_path / "out" / "labels.nii.gz").is_file()
    assert "tiny@0.0.1" in output and "forward" in output


def test_cli_segments_a_dicom_folder_and_a_zip(bundle: Path, tmp_path: Path) -> None:
    import zipfile

    from spinecloud_shared.dicom_write import write_ct_series

    phantom = lumbar_phantom()
    files = write_ct_series(phantom.ct, tmp_path / "dicom", key="inference-cli-test")
    _cli_ok([str(tmp_path / "dicom"), "-o", str(tmp_path / "out"), "-m", str(bundle)])
    assert (tmp_path / "out" / "segmentation.dcm").is_file()
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in files:
            handle.write(path, f"series/{path.name}")
    _cli_ok([str(archive), "-o", str(tmp_path / "out-zip"), "-m", str(bundle)])
    assert (tmp_path / "out-zip" / "labels.nii.gz").is_file()


def test_cli_error_is_one_red_line_and_exit_code_2(tmp_path: Path) -> None:
    grid = _grid()
    source = write_nifti(grid.with_array(np.full(grid.shape, -1000, np.int16)), tmp_path / "a.nii")
    result = CliRunner().invoke(cli.app, [str(source), "-o", str(tmp_path / "o"), "-m", "nope"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error [image_all_air]: Only 0.000 %")


def test_root_command_registers_segment() -> None:
    from spinecloud_shared.cli.app import app as root

    result = CliRunner().invoke(root, ["segment", "--help"])
    assert result.exit_code == 0, result.output
    assert "INPUT" in result.output

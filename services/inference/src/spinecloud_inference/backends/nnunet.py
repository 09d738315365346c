"""The nnU-Net v2 backend: a trained nnU-Net model folder or export zip, served in memory.

Artefact layouts (the manifest's ``weights_sha256`` lists the checkpoints, or the zip)::

    <folder>/spinecloud.json                      the Manifest (backend "nnunet")
    <folder>/.../dataset.json, plans.json         an nnU-Net trained model folder, at any depth
    <folder>/.../fold_X/checkpoint_final.pth      (or checkpoint_best.pth), X = 0..4 or "all"

or ``<folder>/spinecloud.json`` beside one ``*.zip`` made by ``nnUNetv2_export_model_to_zip``
(``export_pretrained_model``), extracted once into a cache folder keyed by its digest. Folder
layouts as TotalSegmentator publishes them (``Dataset.../nnUNetTrainer...__nnUNetPlans__
3d_fullres/fold_0/...``) are found by searching for ``plans.json`` beside ``dataset.json``;
when a folder holds several configurations, ``3d_fullres`` is preferred.

The model is loaded with ``nnUNetPredictor.initialize_from_trained_model_folder`` and kept in
memory; each call runs ``predict_single_npy_array``. nnU-Net finds the trainer class named in
the checkpoint by importing modules of its own package; for a trainer outside
``nnUNetTrainer.py`` that search imports modules (Primus) needing timm and torchvision, which
need not be importable. When the search fails, the network is built from the plans with the
base ``nnUNetTrainer`` (what every trainer that keeps the plans' architecture does) and given
to ``manual_initialization``.

Geometry. nnU-Net works on arrays in SimpleITK order ``(z, y, x)`` with spacing in that order;
its training images were NIfTI files read by SimpleITK. A model trained on images whose axes
run along RAS (SpineCloud's raw datasets, TotalSegmentator's canonical NIfTI) therefore has
manifest orientation ``RAS``: the pipeline gives an ``(1, X, Y, Z)`` RAS array, this backend
transposes it to ``(1, Z, Y, X)`` with the spacing reversed, and transposes nnU-Net's label
map back. Target spacing is the plans' (nnU-Net's own resampling is then the identity), and
intensities are left to nnU-Net (manifest normalisation ``none``). Output values are nnU-Net
label values; ``manifest.labels`` maps them to canonical ids.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from spinecloud_inference.backends.base import FractionCallback, InferenceOptions
from spinecloud_shared import labels
from spinecloud_shared.errors import LabelError, ModelArtifactError
from spinecloud_shared.models.manifest import (
    MANIFEST_FILE,
    Backend,
    Intensity,
    Manifest,
    read_manifest,
    sha256_file,
    write_manifest,
)
from spinecloud_shared.settings import get_settings

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

logger = logging.getLogger(__name__)

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
PREFERRED_CONFIGURATION = "3d_fullres"
#: nnU-Net's own test-time augmentation (mirroring along the axes the checkpoint allows).
USE_MIRRORING = True
#: Normalisation is nnU-Net's (from the plans): the pipeline passes HU through.
NNUNET_INTENSITY = Intensity(normalisation="none")


# --------------------------------------------------------------------------- model folders


def _is_model_folder(folder: Path) -> bool:
    return (folder / "plans.json").is_file() and (folder / "dataset.json").is_file()


def _fold_folders(model_folder: Path) -> list[Path]:
    return sorted(p for p in model_folder.glob("fold_*") if p.is_dir())


def find_trained_model_folder(root: Path) -> Path:
    """The nnU-Net trained model folder under ``root`` (``root`` itself or deeper).

    A trained model folder holds ``plans.json``, ``dataset.json`` and ``fold_*`` folders. With
    several, the single one whose name ends in ``__3d_fullres`` wins; otherwise it is ambiguous.
    """
    found = sorted(p.parent for p in root.rglob("plans.json") if _is_model_folder(p.parent))
    found = [f for f in found if _fold_folders(f)]
    if len(found) > 1:
        found = [f for f in found if f.name.endswith(f"__{PREFERRED_CONFIGURATION}")] or found
    if not found:
        raise ModelArtifactError(
            f"{root}: no nnU-Net trained model folder (plans.json, dataset.json, fold_*/).",
            path=str(root),
        )
    if len(found) > 1:
        names = ", ".join(str(f.relative_to(root)) for f in found)
        raise ModelArtifactError(
            f"{root}: several nnU-Net model folders ({names}); keep one per artefact.",
            path=str(root),
        )
    return found[0]


def available_folds(model_folder: Path) -> tuple[tuple[str, ...], str]:
    """(folds, checkpoint file name): every fold with ``checkpoint_final.pth``, else ``_best``."""
    folds = _fold_folders(model_folder)
    for checkpoint in CHECKPOINTS:
        names = tuple(f.name.removeprefix("fold_") for f in folds if (f / checkpoint).is_file())
        if names:
            return names, checkpoint
    raise ModelArtifactError(
        f"{model_folder}: no fold holds {' or '.join(CHECKPOINTS)}.", path=str(model_folder)
    )


def checkpoint_files(model_folder: Path) -> list[Path]:
    """The checkpoint files the backend loads (one per fold)."""
    folds, checkpoint = available_folds(model_folder)
    return [model_folder / f"fold_{fold}" / checkpoint for fold in folds]


# --------------------------------------------------------------------------- zips


def _safe_members(archive: zipfile.ZipFile, zip_path: Path) -> list[zipfile.ZipInfo]:
    """The archive's entries, refusing absolute paths and ``..`` (no writes outside)."""
    members = archive.infolist()
    for member in members:
        path = PurePosixPath(member.filename)
        if path.is_absolute() or ".." in path.parts:
            raise ModelArtifactError(
                f"{zip_path}: entry {member.filename!r} points outside the archive; refused.",
                path=str(zip_path),
            )
    return members


def extract_model_zip(zip_path: Path, destination: Path) -> Path:
    """Unpack an nnU-Net export zip into ``destination`` (created; must be empty or absent)."""
    if destination.exists() and any(destination.iterdir()):
        raise ModelArtifactError(f"{destination}: not empty; refusing to extract over it.")
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(partial, members=_safe_members(archive, zip_path))
    except (OSError, zipfile.BadZipFile) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelArtifactError(
            f"{zip_path}: not a readable zip ({exc}).", path=str(zip_path)
        ) from exc
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        destination.rmdir()
    partial.rename(destination)
    return destination


def default_cache_dir() -> Path:
    """Where zips named by an artefact are unpacked: ``<data_dir>/cache/nnunet``."""
    return get_settings().data_dir / "cache" / "nnunet"


def cached_zip_folder(zip_path: Path, cache_dir: Path | None = None) -> Path:
    """The zip unpacked under the cache, keyed by its sha256 (unpacked once)."""
    digest = sha256_file(zip_path)
    target = (cache_dir or default_cache_dir()) / digest[:32]
    if not target.is_dir():
        extract_model_zip(zip_path, target)
    return target


def import_model_zip(zip_path: Path, destination: Path) -> Path:
    """Install an export zip that carries a ``spinecloud.json`` as an artefact folder.

    The zip's manifest (written by SpineCloud training) is verified against the unpacked
    checkpoints; ``destination`` is then a folder ``load_model`` serves.
    """
    folder = extract_model_zip(zip_path, destination)
    if not (folder / MANIFEST_FILE).is_file():
        shutil.rmtree(folder)
        raise ModelArtifactError(
            f"{zip_path}: no {MANIFEST_FILE} inside; use adopt_model for a plain nnU-Net zip.",
            path=str(zip_path),
        )
    read_manifest(folder, verify=True)
    return folder


def trained_model_folder(folder: Path, cache_dir: Path | None = None) -> Path:
    """The trained model folder of an artefact: in it, or in the zip it holds."""
    zips = sorted(folder.glob("*.zip"))
    if not any(folder.rglob("plans.json")) and len(zips) == 1:
        return find_trained_model_folder(cached_zip_folder(zips[0], cache_dir))
    return find_trained_model_folder(folder)


# --------------------------------------------------------------------------- manifests


def read_plans_geometry(model_folder: Path) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(target spacing mm, patch size) of the model, along RAS x, y, z (see module docstring).

    nnU-Net stores a configuration's spacing and patch size in its transposed axis order; undo
    the transposition (``transpose_backward``) to get SimpleITK order, then reverse it.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(str(model_folder / "plans.json"))
    configuration = plans.get_configuration(_configuration_name(model_folder, plans))
    backward = plans.transpose_backward
    spacing = [float(configuration.spacing[i]) for i in backward]
    patch = [int(configuration.patch_size[i]) for i in backward]
    return tuple(reversed(spacing)), tuple(reversed(patch))


def _configuration_name(model_folder: Path, plans: Any) -> str:
    """The configuration of a model folder, from its name ``Trainer__Plans__configuration``."""
    name = model_folder.name.split("__")[-1]
    if name in plans.available_configurations:
        return name
    return PREFERRED_CONFIGURATION


def canonical_id(structure: str) -> int | None:
    """Canonical id of a dataset.json label name ('L4', 'vertebrae_L4', 'sacrum'), or None."""
    if structure in labels.STRUCTURE_FILES:
        return labels.STRUCTURE_FILES[structure]
    try:
        return labels.by_name(structure.removeprefix("vertebrae_")).id
    except LabelError:
        return None


def labels_from_dataset_json(dataset_json: Mapping[str, Any]) -> dict[int, int]:
    """nnU-Net label value -> canonical id, from the label names; other structures -> 0.

    When two names mean one canonical class (TotalSegmentator's ``sacrum`` and
    ``vertebrae_S1``), the lower label value keeps it and the other maps to background.
    """
    mapping: dict[int, int] = {}
    taken: set[int] = set()
    for name, value in sorted(dataset_json["labels"].items(), key=lambda item: item[1]):
        if not isinstance(value, int):
            raise ModelArtifactError(f"label {name!r} is region-based; not supported.")
        target = canonical_id(name) if value != 0 else 0
        mapping[value] = target if target and target not in taken else 0
        taken.add(mapping[value])
    return mapping


def nnunet_manifest(
    model_folder: Path,
    *,
    name: str,
    version: str,
    label_map: Mapping[int, int] | None = None,
    root: Path | None = None,
    **fields: Any,
) -> Manifest:
    """A manifest for a trained model folder: geometry from its plans, labels by name.

    The weights listed are the checkpoints, relative to ``root`` (default ``model_folder``).
    Other keyword ``fields`` (description, lineage, state) pass through to ``Manifest``.
    """
    root = root or model_folder
    spacing, patch = read_plans_geometry(model_folder)
    if label_map is None:
        label_map = labels_from_dataset_json(
            json.loads((model_folder / "dataset.json").read_text())
        )
    weights = {str(p.relative_to(root)): "" for p in checkpoint_files(model_folder)}
    return Manifest(
        name=name,
        version=version,
        backend=Backend.NNUNET,
        labels=dict(label_map),
        target_spacing_mm=(spacing[0], spacing[1], spacing[2]),
        patch_size=(patch[0], patch[1], patch[2]),
        orientation="RAS",
        intensity=NNUNET_INTENSITY,
        weights_sha256=weights,
        **fields,
    )


def adopt_model(
    source: Path,
    destination: Path,
    *,
    name: str,
    version: str,
    label_map: Mapping[int, int] | None = None,
    **fields: Any,
) -> Path:
    """Make a published nnU-Net model (folder or export zip) a SpineCloud artefact folder.

    The model is copied (or unpacked) into ``destination`` and a manifest is written beside it
    (``nnunet_manifest``: labels from dataset.json names unless ``label_map`` is given).
    """
    if source.is_file():
        extract_model_zip(source, destination)
    else:
        shutil.copytree(source, destination)
    model_folder = find_trained_model_folder(destination)
    manifest = nnunet_manifest(
        model_folder,
        name=name,
        version=version,
        label_map=label_map,
        root=destination,
        **fields,
    )
    write_manifest(manifest, destination)
    return destination


# --------------------------------------------------------------------------- predictor


def _new_predictor(device: torch.device, options: InferenceOptions) -> nnUNetPredictor:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    return nnUNetPredictor(
        tile_step_size=1.0 - options.window_overlap(),
        use_gaussian=True,
        use_mirroring=USE_MIRRORING,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )


def _initialise_with_base_trainer(
    predictor: nnUNetPredictor, model_folder: Path, folds: tuple[str, ...], checkpoint: str
) -> None:
    """What ``initialize_from_trained_model_folder`` does, with the base trainer's network."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    plans = PlansManager(str(model_folder / "plans.json"))
    states = [
        torch.load(
            model_folder / f"fold_{fold}" / checkpoint, map_location="cpu", weights_only=False
        )
        for fold in folds
    ]
    configuration = plans.get_configuration(states[0]["init_args"]["configuration"])
    network = nnUNetTrainer.build_network_architecture(
        plans,
        configuration,
        determine_num_input_channels(plans, configuration, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    predictor.manual_initialization(
        network,
        plans,
        configuration,
        [state["network_weights"] for state in states],
        dataset_json,
        states[0]["trainer_name"],
        states[0].get("inference_allowed_mirroring_axes"),
    )


def initialise_predictor(
    model_folder: Path, *, device: torch.device, options: InferenceOptions
) -> nnUNetPredictor:
    """An ``nnUNetPredictor`` holding every fold of ``model_folder`` (see module docstring)."""
    folds, checkpoint = available_folds(model_folder)
    predictor = _new_predictor(device, options)
    try:
        predictor.initialize_from_trained_model_folder(str(model_folder), folds, checkpoint)
    except (ImportError, RuntimeError) as exc:
        logger.warning(
            "nnU-Net could not build the trainer of %s (%s); using the base nnUNetTrainer "
            "network from the plans",
            model_folder.name,
            exc,
        )
        predictor = _new_predictor(device, options)
        try:
            _initialise_with_base_trainer(predictor, model_folder, folds, checkpoint)
        except (ImportError, RuntimeError, KeyError) as second:
            raise ModelArtifactError(
                f"{model_folder}: the nnU-Net model cannot be loaded ({second}).",
                path=str(model_folder),
            ) from second
    if predictor.label_manager.has_regions:
        raise ModelArtifactError(
            f"{model_folder}: region-based nnU-Net models are not supported.",
            path=str(model_folder),
        )
    return predictor


# --------------------------------------------------------------------------- backend


class NnUNetBackend:
    """An initialised ``nnUNetPredictor`` behind the ``SegmentationBackend`` contract."""

    def __init__(
        self, predictor: nnUNetPredictor, manifest: Manifest, *, device: str, model_folder: Path
    ) -> None:
        self._predictor = predictor
        self._manifest = manifest
        self._device = device
        self.model_folder = model_folder
        # The predictor reloads fold weights on every call: one volume at a time.
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Manifest:
        """The model's manifest."""
        return self._manifest

    @property
    def device(self) -> str:
        """Where the network runs."""
        return self._device

    @property
    def num_channels(self) -> int:
        """nnU-Net label values, background included (they are consecutive from 0)."""
        return int(max(self._predictor.label_manager.all_labels)) + 1

    def predict(
        self, image: npt.NDArray[np.float32], *, progress: FractionCallback | None = None
    ) -> npt.NDArray[Any]:
        """nnU-Net label map ``(X, Y, Z)`` of a prepared ``(1, X, Y, Z)`` image."""
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"expected a (1, X, Y, Z) image, got shape {image.shape}")
        if progress is not None:
            progress(0.0)
        zyx = np.ascontiguousarray(image.transpose(0, 3, 2, 1), dtype=np.float32)
        spacing_zyx = [float(s) for s in reversed(self._manifest.target_spacing_mm)]
        with self._lock:
            segmentation = self._predictor.predict_single_npy_array(zyx, {"spacing": spacing_zyx})
        if progress is not None:
            progress(1.0)
        return np.ascontiguousarray(np.asarray(segmentation).transpose(2, 1, 0))


def require_listed_weights(folder: Path, model_folder: Path, manifest: Manifest) -> None:
    """Refuse checkpoints the manifest does not list (their digests were never verified).

    A model unpacked from a zip in the artefact is covered by the zip's listed digest.
    """
    if not model_folder.is_relative_to(folder):
        zips = {p.name for p in folder.glob("*.zip")}
        if not zips & set(manifest.weights_sha256):
            raise ModelArtifactError(
                f"{folder}: the model zip is not listed in {MANIFEST_FILE} weights_sha256.",
                path=str(folder),
            )
        return
    unlisted = [
        str(p.relative_to(folder))
        for p in checkpoint_files(model_folder)
        if str(p.relative_to(folder)) not in manifest.weights_sha256
    ]
    if unlisted:
        raise ModelArtifactError(
            f"{folder}: checkpoints {unlisted} are not listed in {MANIFEST_FILE} "
            "weights_sha256; refusing unverified weights.",
            path=str(folder),
        )


def load_nnunet_model(
    folder: Path, manifest: Manifest, *, device: str, options: InferenceOptions
) -> NnUNetBackend:
    """``BackendLoader`` for ``Backend.NNUNET``: the artefact in ``folder``, loaded once.

    Every checkpoint that will run must be listed (and so verified) in the manifest.
    ``nnUNet_def_n_proc`` is exported first (``worker_settings``), in case nnunetv2 is not
    imported yet.
    """
    # Imported here: worker_settings pulls in the job/database layer, which the
    # ``spinecloud segment`` command with a MONAI model never needs (bench/inference_e2e.py).
    from spinecloud_inference.worker_settings import configure_nnunet_environment

    configure_nnunet_environment()
    folder = folder.resolve()
    model_folder = trained_model_folder(folder)
    require_listed_weights(folder, model_folder, manifest)
    predictor = initialise_predictor(model_folder, device=torch.device(device), options=options)
    return NnUNetBackend(predictor, manifest, device=device, model_folder=model_folder)

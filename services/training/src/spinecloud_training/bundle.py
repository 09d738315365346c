"""Write a trained SegResNet as a MONAI bundle folder in SpineCloud's model artefact contract.

::

    folder/configs/metadata.json    MONAI bundle metadata (versions, task, input/output format)
    folder/configs/inference.json   ``network_def`` (SegResNet) and the sliding-window inferer
    folder/models/model.pt          the network's state_dict
    folder/spinecloud.json          the Manifest (labels, preprocessing, lineage, metrics, sha256)

The inference service reads exactly these files: it instantiates ``network_def`` with
``monai.bundle.ConfigParser``, loads ``models/model.pt``, prepares the CT as the manifest says
(RAS, ``target_spacing_mm`` linear, HU window scaled to [0, 1]) and maps output channel c to
the canonical id ``manifest.labels[c]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from spinecloud_shared import labels
from spinecloud_shared.models.manifest import (
    Backend,
    Intensity,
    Lineage,
    Manifest,
    write_manifest,
)
from spinecloud_training.presets import Preset

METADATA_FILE = Path("configs/metadata.json")
INFERENCE_FILE = Path("configs/inference.json")
WEIGHTS_FILE = Path("models/model.pt")
METADATA_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20220324.json"
)


@dataclass(frozen=True, kw_only=True)
class BundleInfo:
    """What the bundle says about itself besides the weights."""

    name: str
    version: str
    description: str
    channels: Mapping[int, int]
    lineage: Lineage
    metrics: Mapping[str, Any]


def network_def(preset: Preset, out_channels: int) -> dict[str, Any]:
    """The ``network_def`` entry of ``inference.json`` (a ConfigParser-instantiable SegResNet)."""
    net = preset.network
    definition: dict[str, Any] = {
        "_target_": "monai.networks.nets.SegResNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": out_channels,
        "init_filters": net.init_filters,
        "blocks_down": list(net.blocks_down),
        "blocks_up": list(net.blocks_up),
        "dropout_prob": net.dropout_prob,
    }
    if net.norm_groups != 8:  # SegResNet's default norm is GroupNorm with 8 groups
        name, args = net.norm()
        definition["norm"] = [name, args]
    return definition


def inference_config(preset: Preset, out_channels: int) -> dict[str, Any]:
    """``configs/inference.json``: network, device, inferer and the preprocessing it expects."""
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def(preset, out_channels),
        "network": "$@network_def.to(@device)",
        "inferer": {
            "_target_": "monai.inferers.SlidingWindowInferer",
            "roi_size": list(preset.patch_size),
            "sw_batch_size": preset.sw_batch_size,
            "overlap": preset.sw_overlap,
            "mode": "gaussian",
        },
        "spinecloud_preprocessing": {
            "orientation": "RAS",
            "target_spacing_mm": list(preset.spacing_mm),
            "interpolation": "linear",
            "window_hu": list(preset.window_hu),
            "normalisation": "clip_scale",
        },
    }


def _channel_names(channels: Mapping[int, int]) -> dict[str, str]:
    return {
        str(c): ("background" if label_id == 0 else labels.by_id(label_id).name)
        for c, label_id in sorted(channels.items())
    }


def metadata(preset: Preset, info: BundleInfo) -> dict[str, Any]:
    """``configs/metadata.json`` in MONAI's bundle metadata format."""
    patch = list(preset.patch_size)
    return {
        "schema": METADATA_SCHEMA,
        "version": info.version,
        "changelog": {info.version: "trained by spinecloud train (SegResNet backend)"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {},
        "name": info.name,
        "task": "Segmentation and labelling of the vertebrae C1-L5 and the sacrum in CT",
        "description": info.description,
        "authors": "SpineCloud",
        "copyright": "SpineCloud contributors",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(info.channels),
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": _channel_names(info.channels),
                }
            },
        },
    }


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def write_bundle(
    folder: Path,
    state_dict: Mapping[str, torch.Tensor],
    preset: Preset,
    info: BundleInfo,
) -> Manifest:
    """Write the four files of the bundle into ``folder`` and return the manifest written."""
    folder.mkdir(parents=True, exist_ok=True)
    out_channels = len(info.channels)
    _write_json(folder / INFERENCE_FILE, inference_config(preset, out_channels))
    _write_json(folder / METADATA_FILE, metadata(preset, info))
    (folder / WEIGHTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    cpu_state = {k: v.detach().cpu() for k, v in state_dict.items()}
    torch.save(cpu_state, folder / WEIGHTS_FILE)
    manifest = Manifest(
        name=info.name,
        version=info.version,
        backend=Backend.MONAI_BUNDLE,
        labels=dict(info.channels),
        target_spacing_mm=preset.spacing_mm,
        patch_size=preset.patch_size,
        orientation="RAS",
        intensity=Intensity(window_hu=preset.window_hu, normalisation="clip_scale"),
        description=info.description,
        lineage=info.lineage,
        metrics=dict(info.metrics),
        weights_sha256={WEIGHTS_FILE.as_posix(): ""},
    )
    write_manifest(manifest, folder)
    return manifest


def load_network(folder: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Instantiate ``network_def`` from the bundle with ConfigParser and load its weights."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / INFERENCE_FILE))
    network: torch.nn.Module = parser.get_parsed_content("network_def")
    state = torch.load(folder / WEIGHTS_FILE, map_location=device, weights_only=True)
    network.load_state_dict(state)
    return network.to(device).eval()

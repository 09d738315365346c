"""``spinecloud demo``: the main job on embedded defaults, end to end on this machine.

At this stage of the platform the demo exercises the foundation: a procedural CT phantom is
written as a DICOM series, read back through the same reader that ingests hospital series,
checked voxel for voxel against the original, and written as NIfTI with its labels and
centroids, with a per-vertebra table. Segmentation joins it when the inference service lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from spinecloud_shared import labels
from spinecloud_shared.cli.options import parse_levels
from spinecloud_shared.errors import GeometryMismatchError
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume

console = Console()


def vertebra_table(label_map: Volume, title: str) -> Table:
    """Per-vertebra voxel count, volume in ml and centroid (RAS mm)."""
    from spinecloud_shared.centroids import centroids_from_labels

    table = Table(title=title)
    for column in ("level", "region", "voxels", "volume (ml)", "centroid RAS (mm)"):
        table.add_column(column, justify="right" if column != "level" else "left")
    voxel_ml = float(np.prod(label_map.spacing_mm)) / 1000.0
    counts = np.bincount(label_map.array.ravel(), minlength=labels.MAX_ID + 1)
    for label, centre in sorted(
        centroids_from_labels(label_map).items(), key=lambda item: labels.by_id(item[0]).order
    ):
        vertebra = labels.by_id(label)
        table.add_row(
            vertebra.name,
            vertebra.region.value,
            str(counts[label]),
            f"{counts[label] * voxel_ml:.1f}",
            "(" + ", ".join(f"{v:.1f}" for v in centre) + ")",
        )
    return table


def _check_round_trip(phantom: Phantom, read_back: Volume) -> None:
    from spinecloud_shared.dicom_series import to_dicom_grid

    # The reader returns the grid dcm2niix would (see dicom_series), exactly: no interpolation.
    expected = to_dicom_grid(phantom.ct)
    expected.require_same_grid(read_back, what="phantom CT and the DICOM series read back")
    if not np.array_equal(read_back.array, expected.array):
        raise GeometryMismatchError("The DICOM series read back differs from the phantom CT.")


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder")] = Path("out/demo"),
    seed: Annotated[int, typer.Option(help="Phantom seed")] = 7,
    levels: Annotated[str, typer.Option(help="FIRST:LAST level")] = "T9:sacrum",
    orientation: Annotated[str, typer.Option(help="Axis codes of the phantom")] = "LPS",
) -> None:
    """Run the main job on embedded defaults (no server, no download) and report."""
    from spinecloud_shared.centroids import write_ctd_json
    from spinecloud_shared.dicom_series import read_dicom_series
    from spinecloud_shared.dicom_write import write_ct_series
    from spinecloud_shared.nifti import write_nifti

    spec = PhantomSpec(seed=seed, levels=parse_levels(levels), orientation=orientation.upper())
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        step = progress.add_task("Generating a CT phantom", total=None)
        phantom = generate_phantom(spec)
        progress.update(step, description="Writing it as a DICOM CT series")
        files = write_ct_series(phantom.ct, out / "dicom", key=f"demo-{seed}")
        progress.update(step, description="Reading the series back")
        volume = read_dicom_series(out / "dicom")
        _check_round_trip(phantom, volume)
        progress.update(step, description="Writing NIfTI, labels and centroids")
        write_nifti(volume, out / "ct.nii.gz")
        write_nifti(phantom.labels, out / "labels.nii.gz")
        write_ctd_json(phantom.centroids, phantom.labels, out / "ctd.json")
    console.print(
        f"CT series: {len(files)} slices, grid {volume.shape}, orientation {volume.orientation}, "
        f"spacing {tuple(round(s, 3) for s in volume.spacing_mm)} mm -> read back identical."
    )
    console.print(vertebra_table(phantom.labels, "Phantom vertebrae (ground truth)"))
    console.print(f"Outputs in [bold]{out}[/]: dicom/, ct.nii.gz, labels.nii.gz, ctd.json")

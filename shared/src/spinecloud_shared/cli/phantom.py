"""``spinecloud phantom``: write procedural spine phantoms in the formats SpineCloud reads."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import track

from spinecloud_shared.cli.options import parse_levels, parse_spacing
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom

app = typer.Typer(
    help="Procedural spine phantoms (CT + exact labels) for tests, demos, training.",
    no_args_is_help=True,
)
console = Console()


class OutputFormat(StrEnum):
    """Where and how phantoms are written."""

    DICOM = "dicom"
    NIFTI = "nifti"
    TOTALSEGMENTATOR = "totalsegmentator"
    VERSE = "verse"


def _write_plain(phantoms: list[Phantom], out: Path, output_format: OutputFormat) -> None:
    from spinecloud_shared.centroids import write_ctd_json
    from spinecloud_shared.dicom_series import to_dicom_grid
    from spinecloud_shared.dicom_write import write_ct_series

    for index, phantom in enumerate(phantoms):
        case = out / f"phantom{index:03d}"
        truth = phantom.labels
        if output_format is OutputFormat.DICOM:
            write_ct_series(phantom.ct, case / "dicom", key=f"phantom-{case.name}")
            # The labels on the grid the series reads back to, so they pair with its results.
            truth = to_dicom_grid(truth)
        else:
            write_nifti(phantom.ct, case / "ct.nii.gz")
        write_nifti(truth, case / "labels.nii.gz")
        write_ctd_json(phantom.centroids, truth, case / "ctd.json")


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Argument(help="Output folder")],
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.NIFTI,
    count: Annotated[int, typer.Option(min=1, help="Number of cases")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the first case; case n uses seed+n")] = 0,
    levels: Annotated[str | None, typer.Option(help="FIRST:LAST level, e.g. T10:sacrum")] = None,
    spacing: Annotated[str, typer.Option(help="Voxel size in mm: 1.5 or 0.8,0.8,2")] = "1.5",
    orientation: Annotated[str, typer.Option(help="Axis codes, e.g. RAS, LPS, PIR")] = "RAS",
) -> None:
    """Generate phantoms and write them as DICOM series, NIfTI, or a public dataset layout."""
    from spinecloud_shared.layouts import write_totalsegmentator, write_verse

    spec_levels, spec_spacing = parse_levels(levels), parse_spacing(spacing)
    phantoms = [
        generate_phantom(
            PhantomSpec(
                seed=seed + n,
                levels=spec_levels,
                spacing_mm=spec_spacing,
                orientation=orientation.upper(),
            )
        )
        for n in track(range(count), description="Generating phantoms", console=console)
    ]
    if output_format is OutputFormat.TOTALSEGMENTATOR:
        write_totalsegmentator(out, phantoms)
    elif output_format is OutputFormat.VERSE:
        write_verse(out, phantoms)
    else:
        _write_plain(phantoms, out, output_format)
    console.print(f"Wrote {count} phantom(s) as {output_format.value} to [bold]{out}[/]")

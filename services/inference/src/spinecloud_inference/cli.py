"""``spinecloud segment``: segment the vertebrae of one CT from the command line.

INPUT is a DICOM series folder, a ``.zip`` of one series' DICOM files, or a NIfTI file
(``.nii``/``.nii.gz``). The outputs (label NIfTI, centroids, summary, preview and, for DICOM
input, the DICOM-SEG) are written by ``spinecloud_inference.outputs.write_outputs``.
The root ``spinecloud`` command registers ``segment`` through the ``spinecloud.cli`` entry
point; ``app`` runs the same command on its own.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydicom.dataset import Dataset
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from spinecloud_inference.backends import DEFAULT_MODEL, InferenceOptions
from spinecloud_inference.pipeline import SegmentationResult, segment_volume
from spinecloud_shared.errors import InvalidInputError, SpineCloudError
from spinecloud_shared.volume import Volume

#: Largest total uncompressed size of a zip input (bytes): refuses zip bombs.
MAX_ZIP_BYTES = 8 << 30

app = typer.Typer(
    help="Segment and label the vertebrae of a CT series.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


# --------------------------------------------------------------------------- input


def _zip_members(path: Path) -> list[bytes]:
    """The files of a zip archive as bytes (folders, hidden files and DICOMDIR left out)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [
                i
                for i in archive.infolist()
                if not i.is_dir()
                and not Path(i.filename).name.startswith(".")
                and Path(i.filename).name.upper() != "DICOMDIR"
            ]
            if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
                raise InvalidInputError(f"{path}: the archive unpacks to more than 8 GiB.")
            return [archive.read(i) for i in infos]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable zip archive ({exc}).") from exc


def read_input(path: Path) -> tuple[Volume, list[Dataset] | None]:
    """The CT volume (HU) and, for DICOM input, the series' datasets in slice order."""
    from spinecloud_shared.dicom_series import load_datasets, read_dicom_series
    from spinecloud_shared.nifti import read_nifti

    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path, allow_empty=False), None
    if path.is_dir():
        items: list[bytes] | Path = path
    elif name.endswith(".zip") and path.is_file():
        items = _zip_members(path)
    else:
        raise InvalidInputError(
            f"{path}: INPUT must be a DICOM folder, a .zip of DICOM files or a NIfTI file."
        )
    datasets = [dataset for _, dataset in load_datasets(items)]
    volume = read_dicom_series(datasets)
    uids = volume.meta.get("sop_instance_uids", [])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    return volume, [by_uid[uid] for uid in uids]


# --------------------------------------------------------------------------- output


@contextmanager
def _progress_bars() -> Iterator[tuple[Progress, dict[str, TaskID]]]:
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress, {}


def _report(result: SegmentationResult, outputs: dict[str, Path]) -> None:
    """Where each output went, stage timings, findings and a per-vertebra table."""
    console.print(f"Model [bold]{result.model_ref}[/] on {result.device}")
    for key, path in outputs.items():
        console.print(f"  {key:<14} {path}")
    timings = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings_s.items())
    console.print(f"Timings: {timings}")
    table = Table(title="Vertebrae")
    for column in ("level", "volume (ml)", "centroid RAS (mm)"):
        table.add_column(column, justify="right" if column != "level" else "left")
    for level in result.levels:
        x, y, z = level.centroid_ras
        table.add_row(level.name, f"{level.volume_ml:.1f}", f"{x:.1f}, {y:.1f}, {z:.1f}")
    console.print(table if result.levels else "[yellow]No vertebra found.[/]")
    for finding in result.findings:
        line = escape(f"[{finding.code.value}]: {finding.message}")
        console.print(f"[yellow]finding[/] {line}", soft_wrap=True)


def _run(
    input_path: Path,
    out_dir: Path,
    model: str,
    device: str | None,
    models_dir: Path | None,
    options: InferenceOptions,
) -> None:
    from spinecloud_inference.outputs import write_outputs

    with _progress_bars() as (bars, tasks):

        def step(stage: str, fraction: float) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=1.0)
            bars.update(tasks[stage], completed=fraction)

        step("read", 0.0)
        ct, datasets = read_input(input_path)
        step("read", 1.0)
        result = segment_volume(
            ct,
            model,
            device=device,
            progress=lambda stage, fraction: step(stage.value, fraction),
            models_dir=models_dir,
            inference_options=options,
        )
        step("write", 0.0)
        outputs = write_outputs(
            ct,
            result.labels,
            out_dir,
            model_ref=result.model_ref,
            findings=result.findings,
            timings=result.timings_s,
            source_datasets=datasets,
        )
        step("write", 1.0)
    _report(result, outputs)


def segment(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT", help="DICOM series folder, .zip of DICOM files, or NIfTI file"
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="NAME[@VERSION] or a model folder")
    ] = DEFAULT_MODEL,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or cuda:N (default: the GPU if there is one)")
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Models folder (default: SPINECLOUD_DATA_DIR/models)")
    ] = None,
    overlap: Annotated[
        float | None,
        typer.Option(min=0.0, max=0.95, help="Window overlap (default 0.5)"),
    ] = None,
    sw_batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass")] = 2,
) -> None:
    """Segment and label the vertebrae of a CT; write label map, centroids, summary, SEG."""
    options = InferenceOptions(overlap=overlap, sw_batch_size=sw_batch_size)
    try:
        _run(input_path, out_dir, model, device, models_dir, options)
    except SpineCloudError as exc:
        line = escape(f"[{exc.code}]: {exc.message}")
        err_console.print(f"[red]error[/] {line}", soft_wrap=True)
        raise typer.Exit(2) from None


app.command("segment")(segment)

__all__ = ["app", "read_input", "segment"]

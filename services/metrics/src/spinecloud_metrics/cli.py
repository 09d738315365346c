"""``spinecloud metrics``: evaluate a model's predictions, or compare several, into reports.

Files pair up by name: ``PRED_DIR/case.nii.gz`` is evaluated against ``REF_DIR/case.nii.gz``
(``.nii`` or ``.nii.gz``; the case id is the name without the suffix). Every reference needs a
prediction and vice versa. Bad input prints one line naming the file and exits with code 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spinecloud_metrics import report_html, report_markdown
from spinecloud_metrics.aggregate import AggregationConfig, CiMethod, NanPolicy
from spinecloud_metrics.api import Evaluation, Options, evaluate_pairs
from spinecloud_metrics.inputs import pair_folders
from spinecloud_metrics.panel import PanelConfig, SurfaceMode
from spinecloud_metrics.report import ReportData, write_csv, write_json
from spinecloud_shared.errors import InvalidInputError, SpineCloudError
from spinecloud_shared.labels import Scheme

app = typer.Typer(
    help="Benchmark segmentations: the full metric panel, VerSe labelling metrics, statistics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

PredScheme = Annotated[Scheme, typer.Option("--pred-scheme", help="Label scheme of predictions.")]
RefScheme = Annotated[Scheme, typer.Option("--ref-scheme", help="Label scheme of references.")]
Out = Annotated[Path, typer.Option("--out", help="Folder for CSV, JSON, Markdown and HTML.")]
NsdTol = Annotated[float, typer.Option("--nsd-tolerance", help="NSD tolerance, mm.")]
BoundaryTol = Annotated[
    float, typer.Option("--boundary-tolerance", help="Boundary F1 tolerance, mm.")
]
_RESAMPLE_HELP = "Resample predictions on another grid (nearest) instead of refusing them."
_BOTH_EMPTY_HELP = "Score classes absent from both as perfect instead of NaN."
_POLICY_HELP = "NaN/inf in aggregation: worst-case substitution or exclusion."
_MODEL_HELP = "NAME=FOLDER of predictions; repeat per model."
Resample = Annotated[bool, typer.Option("--resample", help=_RESAMPLE_HELP)]
BothEmpty = Annotated[bool, typer.Option("--both-empty-perfect", help=_BOTH_EMPTY_HELP)]
Policy = Annotated[NanPolicy, typer.Option("--policy", help=_POLICY_HELP)]
Models = Annotated[list[str], typer.Option("--model", help=_MODEL_HELP)]
_SURFACE_HELP = (
    "Surface of distance metrics: boundary voxels (MONAI) or area-weighted faces (DeepMind)."
)
Surface = Annotated[SurfaceMode, typer.Option("--surface", help=_SURFACE_HELP)]
Ci = Annotated[CiMethod, typer.Option("--ci", help="95 % CI of means: t interval or bootstrap.")]


@contextmanager
def _domain_errors() -> Iterator[None]:
    """Domain errors become one red line and exit code 2, never a traceback."""
    try:
        yield
    except SpineCloudError as exc:
        message = escape(f"[{exc.code}]: {exc.message}")
        console.print(f"[red]error[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _evaluate_model(model: str, pred_dir: Path, ref_dir: Path, options: Options) -> Evaluation:
    pairs = pair_folders(pred_dir, ref_dir)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[case]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{model}", total=len(pairs), case="")
        return evaluate_pairs(
            pairs, model=model, options=options,
            progress=lambda pair: progress.update(task, advance=1, case=pair.case_id),
        )  # fmt: skip


def _write_reports(report: ReportData, out: Path, title: str) -> None:
    write_csv(report, out)
    write_json(report, out / "report.json")
    (out / "report.md").write_text(report_markdown.render(report, title))
    (out / "report.html").write_text(report_html.render(report, title))
    console.print(f"reports written to {out} (CSV, report.json, report.md, report.html)")


def _options(
    pred_scheme: Scheme,
    ref_scheme: Scheme,
    *,
    nsd: float,
    boundary: float,
    resample: bool,
    both_empty: bool,
    surface: SurfaceMode,
) -> Options:
    """Evaluation options from the command-line values (validated by ``PanelConfig``)."""
    config = PanelConfig(nsd_tolerance_mm=nsd, boundary_tolerance_mm=boundary,
                         both_empty_perfect=both_empty, surface=surface)  # fmt: skip
    return Options(pred_scheme=pred_scheme, ref_scheme=ref_scheme, config=config, resample=resample)


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option("--pred", help="Folder of predicted label maps.")],
    ref: Annotated[Path, typer.Option("--ref", help="Folder of reference label maps.")],
    out: Out = Path("metrics-report"),
    model: Annotated[str, typer.Option("--model", help="Model name in the tables.")] = "model",
    pred_scheme: PredScheme = Scheme.CANONICAL,
    ref_scheme: RefScheme = Scheme.CANONICAL,
    nsd_tolerance: NsdTol = 1.0,
    boundary_tolerance: BoundaryTol = 2.0,
    resample: Resample = False,
    both_empty_perfect: BothEmpty = False,
    surface: Surface = SurfaceMode.VOXELS,
    policy: Policy = NanPolicy.WORST,
    ci: Ci = CiMethod.T,
) -> None:
    """Evaluate one model's predictions against references; write the reports."""
    with _domain_errors():
        options = _options(
            pred_scheme, ref_scheme, nsd=nsd_tolerance, boundary=boundary_tolerance,
            resample=resample, both_empty=both_empty_perfect, surface=surface,
        )  # fmt: skip
        evaluation = _evaluate_model(model, pred, ref, options)
        report = ReportData.from_evaluations(
            [evaluation], options.config, AggregationConfig(policy=policy, ci=ci)
        )
        _write_reports(report, out, f"SpineCloud evaluation: {model}")


def _parse_models(specs: list[str]) -> list[tuple[str, Path]]:
    parsed = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise InvalidInputError(f"--model expects NAME=FOLDER, got {spec!r}.")
        parsed.append((name, Path(folder)))
    if len(parsed) < 2:
        raise InvalidInputError("compare needs at least two --model NAME=FOLDER options.")
    return parsed


@app.command()
def compare(
    ref: Annotated[Path, typer.Option("--ref", help="Folder of reference label maps.")],
    models: Models,
    out: Out = Path("metrics-comparison"),
    pred_scheme: PredScheme = Scheme.CANONICAL,
    ref_scheme: RefScheme = Scheme.CANONICAL,
    nsd_tolerance: NsdTol = 1.0,
    boundary_tolerance: BoundaryTol = 2.0,
    resample: Resample = False,
    both_empty_perfect: BothEmpty = False,
    surface: Surface = SurfaceMode.VOXELS,
    policy: Policy = NanPolicy.WORST,
    ci: Ci = CiMethod.T,
) -> None:
    """Evaluate several models on the same cases; add t-tests, Wilcoxon tests and a ranking."""
    with _domain_errors():
        options = _options(
            pred_scheme, ref_scheme, nsd=nsd_tolerance, boundary=boundary_tolerance,
            resample=resample, both_empty=both_empty_perfect, surface=surface,
        )  # fmt: skip
        evaluations = [
            _evaluate_model(name, folder, ref, options) for name, folder in _parse_models(models)
        ]
        report = ReportData.from_evaluations(
            evaluations, options.config, AggregationConfig(policy=policy, ci=ci)
        )
        _write_reports(report, out, "SpineCloud model comparison")

"""Parsers for command-line values shared by several commands."""

from __future__ import annotations

import typer

from spinecloud_shared import labels
from spinecloud_shared.errors import LabelError


def parse_spacing(text: str) -> tuple[float, float, float]:
    """'1.5' or '0.8,0.8,2' -> three voxel sizes in mm."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"not a list of numbers: {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0:
        raise typer.BadParameter("give one or three positive sizes in mm, e.g. 1.5 or 0.8,0.8,2")
    return values[0], values[1], values[2]


def parse_levels(text: str | None) -> tuple[str, str] | None:
    """'T10:sacrum' -> ('T10', 'sacrum'); None keeps the seed's random run."""
    if not text:
        return None
    first, sep, last = text.partition(":")
    if not sep:
        raise typer.BadParameter("give the first and last level as FIRST:LAST, e.g. T10:sacrum")
    try:
        top, bottom = labels.by_name(first), labels.by_name(last)
    except LabelError as exc:
        raise typer.BadParameter(exc.message) from None
    if top.order > bottom.order:
        raise typer.BadParameter(f"{first} lies below {last}; give the upper level first")
    return top.name, bottom.name

"""Routing rules: which series of an arriving study each model segments. Pure logic."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from spinecloud_gateway.settings import RoutingRule

__all__ = ["SeriesFacts", "matches", "rules_for", "study_project"]


@dataclass(frozen=True)
class SeriesFacts:
    """What rules look at in a series (from Orthanc's main DICOM tags)."""

    modality: str | None
    number_of_instances: int
    body_part: str | None = None
    description: str | None = None


def _search(pattern: str | None, value: str | None) -> bool:
    return pattern is not None and re.search(pattern, value or "", re.IGNORECASE) is not None


def matches(rule: RoutingRule, facts: SeriesFacts) -> bool:
    """Whether every condition of ``rule`` holds for the series."""
    if (facts.modality or "").upper() != rule.modality.upper():
        return False
    if facts.number_of_instances < rule.min_slices:
        return False
    if rule.max_slices is not None and facts.number_of_instances > rule.max_slices:
        return False
    if rule.body_part_regex is not None and not _search(rule.body_part_regex, facts.body_part):
        return False
    if rule.description_regex is not None and not _search(
        rule.description_regex, facts.description
    ):
        return False
    return not _search(rule.exclude_description_regex, facts.description)


def rules_for(rules: Sequence[RoutingRule], facts: SeriesFacts) -> list[RoutingRule]:
    """The matching rules, first rule first, one per (model name, model version)."""
    chosen: dict[tuple[str, str], RoutingRule] = {}
    for rule in rules:
        key = (rule.model_name, rule.model_version)
        if key not in chosen and matches(rule, facts):
            chosen[key] = rule
    return list(chosen.values())


def study_project(
    rules: Sequence[RoutingRule], series: Sequence[SeriesFacts], default: str | None
) -> str | None:
    """The project name a study goes to: the first matching rule that names one, or default."""
    for rule in rules:
        if rule.project is not None and any(matches(rule, facts) for facts in series):
            return rule.project
    return default

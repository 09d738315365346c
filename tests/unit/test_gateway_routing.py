"""Routing rules and gateway settings: pure logic, no servers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from spinecloud_gateway.settings import GatewaySettings, RoutingRule
from spinecloud_gateway.studies.routing import SeriesFacts, matches, rules_for, study_project

CT = SeriesFacts(
    modality="CT", number_of_instances=200, body_part="LSPINE", description="Spine 1.0 B30f"
)


def test_default_rule_takes_ct_with_enough_slices() -> None:
    rule = RoutingRule(name="ct")
    assert matches(rule, CT)
    assert not matches(rule, SeriesFacts(modality="MR", number_of_instances=200))
    assert not matches(rule, SeriesFacts(modality="CT", number_of_instances=5))
    assert matches(rule, SeriesFacts(modality="ct", number_of_instances=20))


@pytest.mark.parametrize(
    "description", ["Scout", "LOCALIZER 2", "Topogram 0.6 T20s", "Dose Report"]
)
def test_default_rule_skips_non_diagnostic_series(description: str) -> None:
    facts = SeriesFacts(modality="CT", number_of_instances=300, description=description)
    assert not matches(RoutingRule(name="ct"), facts)


def test_regex_filters_and_slice_bounds() -> None:
    spine = RoutingRule(name="spine", body_part_regex="spine|^L?SPINE$", max_slices=1000)
    assert matches(spine, CT)
    assert not matches(spine, SeriesFacts(modality="CT", number_of_instances=200, body_part="HEAD"))
    assert not matches(spine, SeriesFacts(modality="CT", number_of_instances=200))  # no body part
    assert not matches(
        spine, SeriesFacts(modality="CT", number_of_instances=1001, body_part="SPINE")
    )
    thin = RoutingRule(name="thin", description_regex=r"\b(0\.[5-9]|1\.0)\b")
    assert matches(thin, CT)
    assert not matches(
        thin, SeriesFacts(modality="CT", number_of_instances=200, description="5.0 B30f")
    )


def test_rules_give_one_job_per_model_version_first_rule_wins() -> None:
    rules = [
        RoutingRule(name="a", model_name="seg", model_version="1", priority=8),
        RoutingRule(name="b", model_name="seg", model_version="1", priority=2),
        RoutingRule(name="c", model_name="seg", model_version="2"),
        RoutingRule(name="mr", model_name="other", modality="MR"),
    ]
    chosen = rules_for(rules, CT)
    assert [(r.name, r.model_version, r.priority) for r in chosen] == [("a", "1", 8), ("c", "2", 5)]


def test_study_project_is_the_first_matching_rule_with_a_project() -> None:
    rules = [
        RoutingRule(name="mr", modality="MR", project="neuro"),
        RoutingRule(name="ct", project="spine-research"),
    ]
    assert study_project(rules, [CT], "radiology") == "spine-research"
    mr_only = SeriesFacts(modality="US", number_of_instances=30)
    assert study_project(rules, [mr_only], "radiology") == "radiology"
    assert study_project(rules, [], None) is None


@given(
    modality=st.sampled_from(["CT", "MR", "PT", "SEG", "OT"]),
    count=st.integers(min_value=0, max_value=3000),
    description=st.text(max_size=40),
)
def test_a_matching_rule_always_respects_its_conditions(
    modality: str, count: int, description: str
) -> None:
    rule = RoutingRule(name="p", min_slices=50, max_slices=2000)
    facts = SeriesFacts(modality=modality, number_of_instances=count, description=description)
    if matches(rule, facts):
        assert modality == "CT" and 50 <= count <= 2000
        assert not any(word in description.lower() for word in ("scout", "localizer", "dose"))


def test_settings_refuse_unsafe_configurations() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        RoutingRule(name="bad", body_part_regex="(unclosed")
    with pytest.raises(ValidationError, match="must be set together"):
        GatewaySettings(oidc_issuer="https://idp.test")
    with pytest.raises(ValidationError, match="not '\\*'"):
        GatewaySettings(viewer_origins=["*"])
    with pytest.raises(ValidationError, match="unsupported OIDC algorithms"):
        GatewaySettings(oidc_algorithms=["HS256"])
    with pytest.raises(ValidationError, match="PostgreSQL"):
        GatewaySettings(environment="production", database_url=None)
    with pytest.raises(ValidationError, match="https://"):
        GatewaySettings(
            environment="production",
            database_url="postgresql://db/spinecloud",
            orthanc_password=SecretStr("x"),
            oidc_issuer="https://idp",
            oidc_audience="gw",
            oidc_jwks_url="http://idp/jwks",
        )


def test_settings_read_rules_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SPINECLOUD_ROUTING_RULES",
        '[{"name": "spine", "min_slices": 60, "model_name": "nnunet", "priority": 9}]',
    )
    monkeypatch.setenv("SPINECLOUD_VIEWER_ORIGINS", '["https://ohif.hospital.test"]')
    settings = GatewaySettings()
    assert [(r.name, r.min_slices, r.model_name, r.priority) for r in settings.routing_rules] == [
        ("spine", 60, "nnunet", 9)
    ]
    assert settings.viewer_origins == ["https://ohif.hospital.test"]

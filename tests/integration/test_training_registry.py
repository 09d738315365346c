"""The model registry on real PostgreSQL: registration, promotion rules, one production version
per name (also enforced by the database), the manifest state kept in step, and the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from spinecloud_shared.db.models import Evaluation, JobStatus, RegisteredModel
from spinecloud_shared.db.registry import (
    RegistryConflictError,
    get_model,
    list_models,
    manifest_digest,
    production_model,
    promote,
    register_model,
    retire,
)
from spinecloud_shared.errors import ModelArtifactError, NotFoundError
from spinecloud_shared.models.manifest import ModelState, read_manifest
from spinecloud_shared.settings import get_settings
from spinecloud_training import models_cli
from tests.unit.test_inference_pipeline import write_tiny_bundle

pytestmark = pytest.mark.integration

METRICS = {"dice": 0.5, "hd95": 12.0}


def _name() -> str:
    return f"reg-{uuid.uuid4().hex[:8]}"


def _artefact(root: Path, name: str, version: str) -> Path:
    return write_tiny_bundle(root / name / version, name=name, version=version)


def test_register_is_a_draft_and_idempotent(db_session: Session, tmp_path: Path) -> None:
    name = _name()
    folder = _artefact(tmp_path, name, "1.0")
    model = register_model(db_session, folder, registered_by="alice", metrics=METRICS)
    assert model.state is ModelState.DRAFT and model.backend == "monai_bundle"
    assert model.metrics["dice"] == 0.5 and model.registered_by == "alice"
    assert model.manifest_sha256 == manifest_digest(folder)
    assert model.history[0]["state"] == "draft" and model.history[0]["by"] == "alice"
    assert register_model(db_session, folder).id == model.id

    clash = _artefact(tmp_path / "other", name, "1.0")
    with pytest.raises(RegistryConflictError, match="already registered"):
        register_model(db_session, clash)


def test_register_refuses_a_corrupt_artefact(db_session: Session, tmp_path: Path) -> None:
    folder = _artefact(tmp_path, _name(), "1.0")
    (folder / "models/model.pt").write_bytes(b"replaced")
    with pytest.raises(ModelArtifactError, match="sha256"):
        register_model(db_session, folder)


def test_only_one_production_version_per_name(db_session: Session, tmp_path: Path) -> None:
    name = _name()
    first, second = (_artefact(tmp_path, name, v) for v in ("1.0", "1.1"))
    register_model(db_session, first, metrics=METRICS)
    register_model(db_session, second, metrics=METRICS)

    promoted = promote(db_session, name, "1.0", by="bob", reason="best Dice")
    assert promoted.state is ModelState.PRODUCTION and promoted.promoted_by == "bob"
    assert promoted.promoted_at is not None
    assert read_manifest(first).state is ModelState.PRODUCTION
    assert promoted.manifest_sha256 == manifest_digest(first)

    promote(db_session, name, "1.1", by="carol")
    old = get_model(db_session, name, "1.0")
    assert old.state is ModelState.VALIDATED
    assert old.history[-1]["reason"] == "superseded by 1.1"
    assert read_manifest(first).state is ModelState.VALIDATED
    current = production_model(db_session, name)
    assert current is not None and current.version == "1.1"
    states = {m.version: m.state for m in list_models(db_session, name=name)}
    assert states == {"1.0": ModelState.VALIDATED, "1.1": ModelState.PRODUCTION}


def test_the_database_refuses_a_second_production_row(db_session: Session) -> None:
    name = _name()
    for version in ("1", "2"):
        db_session.add(
            RegisteredModel(
                name=name, version=version, backend="monai_bundle", artifact_uri=f"/m/{version}",
                manifest_sha256="0" * 64, state=ModelState.PRODUCTION,
            )
        )  # fmt: skip
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_promotion_rules(db_session: Session, tmp_path: Path) -> None:
    name = _name()
    bare = _artefact(tmp_path, name, "0.1")
    register_model(db_session, bare)
    with pytest.raises(RegistryConflictError, match="no metrics"):
        promote(db_session, name, "0.1", by="bob")

    folder = _artefact(tmp_path, name, "0.2")
    register_model(db_session, folder, metrics=METRICS)
    retired = retire(db_session, name, "0.2", by="bob", reason="superseded")
    assert retired.state is ModelState.RETIRED and retired.retired_at is not None
    with pytest.raises(RegistryConflictError, match="cannot become production"):
        promote(db_session, name, "0.2", by="bob")
    with pytest.raises(NotFoundError):
        promote(db_session, name, "9.9", by="bob")

    tampered = _artefact(tmp_path, name, "0.3")
    register_model(db_session, tampered, metrics=METRICS)
    (tampered / "models/model.pt").write_bytes(b"replaced")
    with pytest.raises(RegistryConflictError, match="cannot be promoted"):
        promote(db_session, name, "0.3", by="bob")


@pytest.fixture()
def cli_database(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CLI's settings pointed at the session's PostgreSQL database."""
    monkeypatch.setenv("SPINECLOUD_DATABASE_URL", postgres_url)
    get_settings.cache_clear()
    yield postgres_url
    get_settings.cache_clear()


def test_cli_register_promote_list(
    cli_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models_cli, "console", Console(width=250))
    name = _name()
    folder = _artefact(tmp_path, name, "2.0")
    manifest = json.loads((folder / "spinecloud.json").read_text())
    manifest["metrics"] = METRICS
    (folder / "spinecloud.json").write_text(json.dumps(manifest))
    runner = CliRunner()
    registered = runner.invoke(models_cli.app, ["register", str(folder), "--by", "dora"])
    assert registered.exit_code == 0, registered.output
    assert "draft" in registered.output
    promoted = runner.invoke(models_cli.app, ["promote", f"{name}@2.0", "--by", "dora"])
    assert promoted.exit_code == 0, promoted.output
    listed = runner.invoke(models_cli.app, ["list", "--name", name])
    assert listed.exit_code == 0, listed.output
    assert "production" in listed.output and "0.500" in listed.output
    assert read_manifest(folder).state is ModelState.PRODUCTION


def test_promotion_waits_for_the_evaluation_and_takes_its_summary(
    db_session: Session, tmp_path: Path
) -> None:
    name = _name()
    evaluation = Evaluation(name="val", pred_dir="/p", ref_dir="/r")
    db_session.add(evaluation)
    db_session.flush()
    register_model(db_session, _artefact(tmp_path, name, "1.0"), metrics={"val_dice_mean": 0.4})
    model = get_model(db_session, name, "1.0")
    model.evaluation_id = evaluation.id
    with pytest.raises(RegistryConflictError, match="evaluation is queued"):
        promote(db_session, name, "1.0", by="bob")

    evaluation.mark(JobStatus.SUCCEEDED)
    evaluation.summary = {"n_cases": 2, "dice": 0.61, "hd95": 9.5}
    promoted = promote(db_session, name, "1.0", by="bob")
    assert promoted.state is ModelState.PRODUCTION
    assert promoted.metrics["dice"] == 0.61 and promoted.metrics["val_dice_mean"] == 0.4
    assert promoted.metrics["evaluation"]["n_cases"] == 2

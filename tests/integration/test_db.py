"""The database layer on real PostgreSQL and SQLite: migrations, sessions, evaluation tables."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session, selectinload

from spinecloud_shared.db import get_engine, session_scope, upgrade
from spinecloud_shared.db.base import Base
from spinecloud_shared.db.migrate import alembic_config
from spinecloud_shared.db.models import Evaluation, EvaluationRow, JobStatus
from tests.fixtures.services import PostgresDatabases, rolled_back_session

pytestmark = pytest.mark.integration

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
#: JSON that must come back identical: nesting, unicode, floats, nulls, booleans.
SAMPLE_JSON: dict[str, Any] = {
    "labels": [1, 2, 26],
    "spacing_mm": [1.5, 1.5, 2.0],
    "nested": {"dice": 0.9375, "hd95_mm": None, "ok": True},
    "name": "Wirbelsäule L1–L5",
}


def _assert_schema_matches_models(url: str) -> None:
    """The migrated schema is at head and equal to what the ORM models declare."""
    with get_engine(url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == HEAD
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
    assert {"evaluations", "evaluation_rows", "alembic_version"} <= tables


def _round_trip(session: Session) -> None:
    """Write an evaluation with rows, read it back in a fresh identity map, compare."""
    evaluation = Evaluation(
        name="segresnet vs reference", model_ref="segresnet:1", pred_dir="/p", ref_dir="/r",
        params=SAMPLE_JSON,
    )  # fmt: skip
    evaluation.rows = [
        EvaluationRow(table_name="per_class", position=i, row={"label": i, "dice": 0.5 + i / 10})
        for i in range(3)
    ] + [EvaluationRow(table_name="overall", position=0, row=SAMPLE_JSON)]
    session.add(evaluation)
    session.flush()
    session.expunge_all()

    query = select(Evaluation).where(Evaluation.id == evaluation.id)
    loaded = session.scalars(query.options(selectinload(Evaluation.rows))).one()
    assert loaded.status is JobStatus.QUEUED
    assert loaded.params == SAMPLE_JSON
    assert loaded.summary is None
    assert loaded.created_at.tzinfo is not None
    assert loaded.created_at.utcoffset() is not None and not loaded.created_at.utcoffset()
    assert [(r.table_name, r.position) for r in loaded.rows] == [
        ("overall", 0), ("per_class", 0), ("per_class", 1), ("per_class", 2),
    ]  # fmt: skip
    assert loaded.rows[0].row == SAMPLE_JSON


def _lazy_load_raises(session: Session) -> None:
    """``lazy="raise"``: touching an unloaded relationship is an error, not a hidden query."""
    evaluation = Evaluation(name="e", pred_dir="/p", ref_dir="/r")
    session.add(evaluation)
    session.flush()
    session.expunge_all()
    fresh = session.get(Evaluation, evaluation.id)
    assert fresh is not None
    with pytest.raises(InvalidRequestError):
        _ = fresh.rows


def _delete_cascades_to_rows(session: Session) -> None:
    """Deleting an evaluation deletes its rows in the database (ON DELETE CASCADE)."""
    evaluation = Evaluation(name="e", pred_dir="/p", ref_dir="/r")
    evaluation.rows = [EvaluationRow(table_name="per_case", row={"case": "c1"})]
    session.add(evaluation)
    session.flush()
    session.execute(text("DELETE FROM evaluations WHERE id = :id"), {"id": evaluation.id})
    count = session.scalar(
        select(func.count()).select_from(EvaluationRow).where(
            EvaluationRow.evaluation_id == evaluation.id
        )
    )  # fmt: skip
    assert count == 0


# --------------------------------------------------------------------------- PostgreSQL


def test_migrations_apply_on_postgresql(postgres_url: str) -> None:
    _assert_schema_matches_models(postgres_url)


def test_upgrade_is_idempotent(postgres_url: str) -> None:
    upgrade(postgres_url)
    _assert_schema_matches_models(postgres_url)


def test_concurrent_upgrades_from_three_processes(postgres_databases: PostgresDatabases) -> None:
    url = postgres_databases.create()
    # Each process imports first, then all call upgrade() at the same agreed moment.
    code = (
        "import sys, time; from spinecloud_shared.db.migrate import upgrade; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); upgrade(sys.argv[1])"
    )
    start_at = str(time.time() + 2.0)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=60)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert all("Error" not in output for output in outputs), outputs
    ran_initial = [output for output in outputs if "Running upgrade  -> 0001" in output]
    assert len(ran_initial) <= 1, outputs  # at most one process did the work
    with get_engine(url).connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    _assert_schema_matches_models(url)


def test_training_job_uniqueness_migration_names_existing_duplicates(
    postgres_databases: PostgresDatabases,
) -> None:
    # A database from before r0006 may hold two jobs for one version: the upgrade stops and
    # names them instead of choosing one; once the extra row is gone it completes.
    url = postgres_databases.create()
    upgrade(url, "r0005")
    insert = text(
        "INSERT INTO training_jobs (id, backend, preset, dataset, model_name, model_version, "
        "params, progress, result, cancel_requested, attempts, status, created_at, updated_at) "
        "VALUES (:id, 'segresnet', 'demo', 'phantoms', 'spine', '1.0.0', '{}', '{}', '{}', "
        "false, 0, 'queued', now(), now())"
    )
    with get_engine(url).begin() as connection:
        for job_id in ("job-1", "job-2"):
            connection.execute(insert, {"id": job_id})
    with pytest.raises(RuntimeError, match=r"spine@1\.0\.0 \(2 jobs\)"):
        upgrade(url)
    with get_engine(url).begin() as connection:
        connection.execute(text("DELETE FROM training_jobs WHERE id = 'job-2'"))
    upgrade(url)
    _assert_schema_matches_models(url)


def test_round_trip_on_postgresql(db_session: Session) -> None:
    _round_trip(db_session)


def test_jsonb_is_used_on_postgresql(db_session: Session) -> None:
    column_type = db_session.scalar(
        text(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'evaluation_rows' AND column_name = 'row'"
        )
    )
    assert column_type == "jsonb"


def test_lazy_loading_is_refused_on_postgresql(db_session: Session) -> None:
    _lazy_load_raises(db_session)


def test_delete_cascades_on_postgresql(db_session: Session) -> None:
    _delete_cascades_to_rows(db_session)


def test_status_outside_the_vocabulary_is_refused(db_session: Session) -> None:
    evaluation = Evaluation(name="e", pred_dir="/p", ref_dir="/r")
    db_session.add(evaluation)
    db_session.flush()
    with pytest.raises(Exception, match="ck_evaluations_job_status"):
        db_session.execute(
            text("UPDATE evaluations SET status = 'exploded' WHERE id = :id"),
            {"id": evaluation.id},
        )


def test_rolled_back_session_leaves_nothing_behind(postgres_url: str) -> None:
    with rolled_back_session(postgres_url) as session:
        session.add(Evaluation(name="isolation-probe", pred_dir="/p", ref_dir="/r"))
        session.commit()  # only releases a savepoint inside the test transaction
        assert session.scalar(select(func.count()).where(Evaluation.name == "isolation-probe"))
    with session_scope(postgres_url) as session:
        assert not session.scalar(select(func.count()).where(Evaluation.name == "isolation-probe"))


def test_session_scope_commits_and_rolls_back(postgres_url: str) -> None:
    with session_scope(postgres_url) as session:
        kept = Evaluation(name="scope-commit", pred_dir="/p", ref_dir="/r")
        session.add(kept)
    with pytest.raises(RuntimeError), session_scope(postgres_url) as session:
        session.add(Evaluation(name="scope-rollback", pred_dir="/p", ref_dir="/r"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(postgres_url) as session:
        names = set(session.scalars(select(Evaluation.name).where(Evaluation.name.like("scope-%"))))
        session.delete(session.get_one(Evaluation, kept.id))
    assert names == {"scope-commit"}


# --------------------------------------------------------------------------- SQLite


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database file in the test's temporary folder."""
    url = f"sqlite:///{tmp_path / 'spinecloud.sqlite3'}"
    upgrade(url)
    return url


def test_migrations_apply_on_sqlite(sqlite_url: str) -> None:
    _assert_schema_matches_models(sqlite_url)


def test_sqlite_has_foreign_keys_and_wal(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as connection:
        assert connection.scalar(text("PRAGMA foreign_keys")) == 1
        assert connection.scalar(text("PRAGMA journal_mode")) == "wal"


def test_round_trip_on_sqlite(sqlite_url: str) -> None:
    with rolled_back_session(sqlite_url) as session:
        _round_trip(session)
        _lazy_load_raises(session)
        _delete_cascades_to_rows(session)


def test_timestamps_are_utc_on_sqlite(sqlite_url: str) -> None:
    moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with session_scope(sqlite_url) as session:
        evaluation = Evaluation(name="e", pred_dir="/p", ref_dir="/r", started_at=moment)
        session.add(evaluation)
    with session_scope(sqlite_url) as session:
        loaded = session.get_one(Evaluation, evaluation.id)
        assert loaded.started_at == moment
        assert loaded.started_at is not None and loaded.started_at.tzinfo is UTC
        assert loaded.updated_at >= loaded.created_at


def test_naive_datetimes_are_refused(sqlite_url: str) -> None:
    with pytest.raises(Exception, match="naive datetime"), session_scope(sqlite_url) as session:
        session.add(
            Evaluation(name="e", pred_dir="/p", ref_dir="/r", started_at=datetime(2026, 1, 1))
        )

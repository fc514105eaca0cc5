"""The job store's contract (serve_app/store/interface.py): every backend passes the
tests that take the ``store`` fixture (a new backend adds itself to BACKENDS), and every
backend that several processes share passes the ``shared`` ones (gateways racing);
then what is a backend's own (memory, SQLite files of older versions, a PostgreSQL
restart, LISTEN/NOTIFY)."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest

from serve_app.store import IdempotencyConflict, Job, JobStatus, JobStore, QueueFull, open_store
from tests.audio_util import DATA
from tests.postgres import PostgresServer

SHARED = ["sqlite-file", "postgresql"]
"""Backends several gateway processes share."""
BACKENDS = [*SHARED, "sqlite-memory"]


def new_database(backend: str, request: pytest.FixtureRequest, tmp: Path) -> str:
    """The URL of an empty database of ``backend``."""
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        return server.database()
    return f"sqlite:///{tmp / 'jobs.db'}" if backend == "sqlite-file" else "sqlite://"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    return open_store(new_database(request.param, request, tmp_path))


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_database(request.param, request, tmp_path)


SPOOL = Path(tempfile.mkdtemp(prefix="whisper-store-test-"))


def spooled(job_id: str) -> str:
    """A spooled upload's path (a store may read the file: PostgreSQL keeps a copy)."""
    path = SPOOL / job_id
    path.write_bytes(b"RIFF" + job_id.encode())
    return str(path)


def add(
    store: JobStore,
    job_id: str,
    *,
    owner: str = "o1",
    key: str | None = None,
    sha: str = "h1",
    max_active: int = 10_000,
    deadline_s: float = 3600,
) -> tuple[Job, bool]:
    return store.create(
        job_id=job_id,
        owner=owner,
        size_bytes=1,
        duration=1.0,
        audio_path=spooled(job_id),
        options={},
        deadline_s=deadline_s,
        max_active=max_active,
        idempotency_key=key,
        audio_sha256=sha,
    )


def test_claim_takes_oldest_queued_once(store: JobStore) -> None:
    add(store, "a")
    time.sleep(0.01)
    add(store, "b")
    first = store.claim(lease_s=60)
    second = store.claim(lease_s=60)
    assert (first and first.id, second and second.id) == ("a", "b")
    assert store.claim(lease_s=60) is None
    job = store.get("a")
    assert job is not None and job.status == JobStatus.processing and job.attempts == 1


def test_expired_lease_is_claimed_again_and_fences_the_old_holder(store: JobStore) -> None:
    add(store, "a")
    old = store.claim(lease_s=0.01)
    assert old is not None
    time.sleep(0.05)
    new = store.claim(lease_s=60)
    assert new is not None and new.id == "a" and new.attempts == 2
    # The first holder lost the job: its writes are refused.
    assert store.finish("a", attempt=old.attempts, result={"text": "late"}) is None
    assert not store.renew("a", attempt=old.attempts, lease_s=60)
    assert store.finish("a", attempt=new.attempts, result={"text": "ok"}) is not None
    job = store.get("a")
    assert job is not None and job.status == JobStatus.done and job.result == {"text": "ok"}
    assert job.audio_path is None


def test_release_requeues(store: JobStore) -> None:
    add(store, "a")
    job = store.claim(lease_s=60)
    assert job is not None
    store.release("a", attempt=job.attempts)
    again = store.claim(lease_s=60)
    assert again is not None and again.attempts == 2


@pytest.mark.parametrize("gateways", [2, 4])
def test_gateways_sharing_a_database_never_claim_the_same_job(shared: str, gateways: int) -> None:
    """Gateway replicas share the queue: every job is claimed exactly once.

    The gateways race in rounds: each claims once per round, all at the same
    moment. A free-for-all proved nothing on a loaded 2-core machine: SQLite's
    busy handler sleeps between retries, so one store could lose every race and
    claim nothing (seen once in 4 stores). Rounds keep the race in every claim,
    and every gateway claims in each round while jobs are left.
    """
    jobs = 200
    writer = open_store(shared)
    for i in range(jobs):
        add(writer, f"job{i:03}")
    stores = [open_store(shared) for _ in range(gateways)]
    claimed: list[list[str]] = [[] for _ in stores]
    errors: list[BaseException] = []
    each_round = threading.Barrier(gateways)

    def worker(n: int) -> None:
        for _ in range(jobs // gateways + 1):  # the last round finds the queue empty
            each_round.wait()
            try:
                if (job := stores[n].claim(lease_s=60)) is not None:
                    claimed[n].append(job.id)
                    stores[n].finish(job.id, attempt=job.attempts, result={})
            except BaseException as exc:  # "database is locked" would land here
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(gateways)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = [job_id for mine in claimed for job_id in mine]
    assert sorted(every) == [f"job{i:03}" for i in range(jobs)]
    assert [len(mine) for mine in claimed] == [jobs // gateways] * gateways


def test_a_commit_by_one_gateway_changes_what_another_watches(shared: str) -> None:
    """Long polls across gateways: SQLite's data_version, PostgreSQL's LISTEN/NOTIFY."""
    here, there = open_store(shared), open_store(shared)
    before = here.data_version()
    add(there, "a")
    deadline = time.monotonic() + 5
    while here.data_version() == before:
        assert time.monotonic() < deadline, "the other gateway's commit went unseen"
        time.sleep(0.02)


def test_the_store_carries_on_after_postgresql_restarts(postgres: PostgresServer) -> None:
    store = open_store(postgres.database())
    add(store, "before")
    seen = store.data_version()
    postgres.restart()
    add(store, "after")  # a pooled connection died with the server: checked, replaced
    job = store.claim(lease_s=60)
    assert job is not None and job.id == "before"
    assert store.finish("before", attempt=job.attempts, result={}) is not None
    assert store.data_version() != seen  # listening again; the watchers look again


def test_memory_store_works_without_a_file(tmp_path: Path) -> None:
    store = open_store("sqlite://")
    add(store, "a")
    job = store.claim(lease_s=60)
    assert job is not None
    store.finish("a", attempt=job.attempts, error="bad", error_code="invalid_audio")
    got = store.get("a")
    assert got is not None and got.status == JobStatus.error and got.error_code == "invalid_audio"
    assert list(tmp_path.iterdir()) == []


def test_idempotency_key_returns_the_same_job_per_owner(store: JobStore) -> None:
    _first, created = add(store, "a", key="k")
    again, created_again = add(store, "b", key="k")
    assert created and not created_again and again.id == "a"
    with pytest.raises(IdempotencyConflict):
        add(store, "c", key="k", sha="other-file")
    # Keys are per owner: another client's "k" is its own job.
    other, created_other = add(store, "d", key="k", owner="o2")
    assert created_other and other.id == "d"
    assert store.get("b") is None and store.get("c") is None


def test_queue_full_is_refused_without_a_row(store: JobStore) -> None:
    add(store, "a", max_active=2)
    add(store, "b", max_active=2)
    with pytest.raises(QueueFull):
        add(store, "c", max_active=2)
    assert store.get("c") is None and store.audio("c") is None  # its audio row went too
    job = store.claim(lease_s=60)
    assert job is not None
    store.finish(job.id, attempt=job.attempts, result={})
    add(store, "c", max_active=2)


def test_delete_and_retention(store: JobStore) -> None:
    add(store, "a")
    add(store, "b")
    removed = store.delete("a")
    assert removed is not None and removed.audio_path == str(SPOOL / "a")
    assert store.get("a") is None
    job = store.claim(lease_s=60)
    assert job is not None
    store.finish("b", attempt=job.attempts, result={})
    assert store.purge_finished(older_than=time.time() - 60) == 0
    assert store.purge_finished(older_than=time.time() + 1) == 1
    assert store.get("b") is None


def test_overdue_jobs_end_in_error(store: JobStore) -> None:
    add(store, "late", deadline_s=10)
    add(store, "fine", deadline_s=1000)
    assert store.expire_overdue(now=time.time() + 100) == [str(SPOOL / "late")]
    late, fine = store.get("late"), store.get("fine")
    assert late is not None and late.status == JobStatus.error
    assert late.error_code == "deadline_exceeded"
    assert fine is not None and fine.status == JobStatus.queued


def test_a_database_of_the_first_schema_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE jobs (id VARCHAR PRIMARY KEY, status VARCHAR, created_at FLOAT,"
            " started_at FLOAT, finished_at FLOAT, size_bytes INTEGER, duration FLOAT,"
            " audio_path VARCHAR, options_json VARCHAR, attempts INTEGER, lease_until FLOAT,"
            " result_json VARCHAR, error VARCHAR, error_code VARCHAR)"
        )
        db.execute(
            "INSERT INTO jobs VALUES ('old', 'done', 1.0, 1.0, 2.0, 10, 1.0, NULL, '{}', 1,"
            ' NULL, \'{"text": "hi"}\', NULL, NULL)'
        )
    store = open_store(f"sqlite:///{path}")
    old = store.get("old")
    assert old is not None and old.result == {"text": "hi"} and old.owner in ("", None)
    add(store, "new")


def test_progress_counts_and_queue_positions(store: JobStore) -> None:
    for job_id in ("a", "b", "c"):
        add(store, job_id)
        time.sleep(0.01)
    job = store.claim(lease_s=60)
    assert job is not None and job.id == "a"
    assert store.set_progress("a", attempt=job.attempts, progress=0.5, language="fr")
    assert not store.set_progress("a", attempt=job.attempts + 1, progress=0.9)
    assert store.renew("a", attempt=job.attempts, lease_s=60)
    got = store.get("a")
    assert got is not None and got.progress == 0.5 and got.language == "fr"
    assert store.count_by_status() == {JobStatus.queued: 2, JobStatus.processing: 1}
    assert store.count_active() == 3
    b, c = store.get("b"), store.get("c")
    assert b is not None and c is not None
    assert (store.queue_position(b), store.queue_position(c)) == (1, 2)


def test_an_owners_jobs_are_listed_newest_first_a_page_at_a_time(store: JobStore) -> None:
    for i in range(5):
        add(store, f"j{i}")
        time.sleep(0.01)
    add(store, "theirs", owner="o2")
    first = store.list_jobs(owner="o1", status=None, limit=3)
    assert [j.id for j in first] == ["j4", "j3", "j2"]
    rest = store.list_jobs(
        owner="o1", status=None, limit=3, before=(first[-1].created_at, first[-1].id)
    )
    assert [j.id for j in rest] == ["j1", "j0"]
    assert store.list_jobs(owner="o1", status=JobStatus.done, limit=3) == []


def test_ended_jobs_and_the_audio_still_needed(store: JobStore) -> None:
    add(store, "a")
    add(store, "b")
    job = store.claim(lease_s=60, job_id="a")
    assert job is not None
    store.finish("a", attempt=job.attempts, result={"text": "x"})
    assert store.ended_among(["a", "b", "gone"]) == {"a", "gone"}
    assert store.audio_paths() == {str(SPOOL / "b")}


def test_the_outbox_hands_out_a_due_delivery_once_and_counts_its_tries(store: JobStore) -> None:
    store.create(
        job_id="w", owner="o1", size_bytes=1, duration=1.0, audio_path=spooled("w"), options={},
        deadline_s=3600, max_active=10, callback_url="https://hooks.example/x",
    )  # fmt: skip
    assert store.outbox.claim(lease_s=60) is None  # not due before the job ends
    job = store.claim(lease_s=60)
    assert job is not None
    store.finish("w", attempt=job.attempts, result={"text": "x"})
    first = store.outbox.claim(lease_s=60)
    assert first is not None and first.webhook_attempts == 1
    assert store.outbox.claim(lease_s=60) is None  # held by the first caller
    retry = store.outbox.tried("w", attempt=1, error="HTTP 503", retry_at=time.time() - 1)
    assert retry is not None and retry.webhook_status == "pending"
    second = store.outbox.claim(lease_s=60)
    assert second is not None and second.webhook_attempts == 2
    assert store.outbox.tried("w", attempt=1, error=None, retry_at=None) is None  # stale try
    done = store.outbox.tried("w", attempt=2, error=None, retry_at=None)
    assert done is not None and done.webhook_status == "delivered"
    assert store.outbox.claim(lease_s=60) is None


def test_a_store_shared_by_nodes_keeps_a_jobs_audio_until_it_ends(store: JobStore) -> None:
    for job_id in ("ends", "deleted", "late"):
        add(store, job_id, deadline_s=10 if job_id == "late" else 3600)
    shared = store.audio("ends") is not None  # PostgreSQL: any node's gateway reads it
    for job_id in ("ends", "deleted", "late"):
        assert store.audio(job_id) == ((b"RIFF" + job_id.encode()) if shared else None)
    claimed = store.claim(lease_s=60, job_id="ends")
    assert claimed is not None
    store.finish("ends", attempt=claimed.attempts, result={})
    store.delete("deleted")
    store.expire_overdue(now=time.time() + 100)
    assert [store.audio(j) for j in ("ends", "deleted", "late")] == [None, None, None]


def test_postgresql_keeps_the_audio(postgres: PostgresServer) -> None:
    store = open_store(postgres.database())
    add(store, "a")
    assert store.audio("a") == b"RIFFa"


def test_a_database_made_by_the_release_before_migrations_upgrades_in_place(
    tmp_path: Path,
) -> None:
    """tests/data/jobs-before-alembic.db was made by the code of commit 68448de (one done job
    with its webhook due and an Idempotency-Key, one queued job)."""
    path = tmp_path / "jobs.db"
    shutil.copy(DATA / "jobs-before-alembic.db", path)
    store = open_store(f"sqlite:///{path}")
    done = store.get("done-job")
    assert done is not None and done.status == JobStatus.done
    assert done.result is not None and done.result["text"] == "ask not"
    assert done.options == {"language": "en", "word_timestamps": True}
    due = store.outbox.claim(lease_s=60)
    assert due is not None and due.id == "done-job"
    queued = store.claim(lease_s=60)
    assert queued is not None and queued.id == "queued-job"
    replay, created = add(store, "again", owner="owner-a", key="idem-1", sha="sha-1")
    assert not created and replay.id == "done-job"
    add(store, "new")
    assert _revision(path) == "0001"
    open_store(f"sqlite:///{path}")  # opened again: nothing left to do
    assert _revision(path) == "0001"


def test_a_new_postgresql_database_is_made_by_the_migrations(postgres: PostgresServer) -> None:
    import psycopg

    url = postgres.database()
    open_store(url)
    open_store(url)  # a second gateway: already at the newest revision
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]


def _revision(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("SELECT version_num FROM alembic_version").fetchone()[0])

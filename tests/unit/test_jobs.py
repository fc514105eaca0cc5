"""The job store: claims, leases and fencing on a real SQLite file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from serve_app.jobs import JobStatus, JobStore


def add(store: JobStore, job_id: str) -> None:
    store.create(job_id=job_id, size_bytes=1, duration=1.0, audio_path="/x", options={})


def test_claim_takes_oldest_queued_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    add(store, "a")
    time.sleep(0.01)
    add(store, "b")
    first = store.claim(lease_s=60)
    second = store.claim(lease_s=60)
    assert (first and first.id, second and second.id) == ("a", "b")
    assert store.claim(lease_s=60) is None
    job = store.get("a")
    assert job is not None and job.status == JobStatus.processing and job.attempts == 1


def test_expired_lease_is_claimed_again_and_fences_the_old_holder(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
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


def test_release_requeues(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    add(store, "a")
    job = store.claim(lease_s=60)
    assert job is not None
    store.release("a", attempt=job.attempts)
    again = store.claim(lease_s=60)
    assert again is not None and again.attempts == 2


def test_two_stores_on_one_file_never_claim_the_same_job(tmp_path: Path) -> None:
    """Two gateway replicas share the SQLite file: every job is claimed exactly once."""
    path = tmp_path / "jobs.db"
    writer = JobStore(path)
    for i in range(200):
        add(writer, f"job{i:03}")
    stores = [JobStore(path), JobStore(path)]
    claimed: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            while (job := stores[n].claim(lease_s=60)) is not None:
                claimed[n].append(job.id)
                stores[n].finish(job.id, attempt=job.attempts, result={})
        except BaseException as exc:  # "database is locked" would land here
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = claimed[0] + claimed[1]
    assert sorted(every) == [f"job{i:03}" for i in range(200)]
    assert claimed[0] and claimed[1]


def test_memory_store_works_without_a_file(tmp_path: Path) -> None:
    store = JobStore(None)
    add(store, "a")
    job = store.claim(lease_s=60)
    assert job is not None
    store.finish("a", attempt=job.attempts, error="bad", error_code="invalid_audio")
    got = store.get("a")
    assert got is not None and got.status == JobStatus.error and got.error_code == "invalid_audio"
    assert list(tmp_path.iterdir()) == []

"""Embedded executor: coalescing per image, failures, progress, cancel, bounded queue, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from learner.executors import EmbeddedExecutor, JobState, QueueFull, UnknownJob
from learner.jobs import CONSOLIDATION_IMAGE_ID, TrainJob
from tests.helpers import new_registry, write_project_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WAIT = 60.0  # seconds any wait in these tests may take at most


def job(image_id: str, round_id: str = "1", **fields) -> TrainJob:
    values = {"project_id": "p", "image_id": image_id, "round_id": round_id, "image_path": "unused", "num_classes": 2,
              "steps": 5}
    values.update(fields)
    return TrainJob(**values)


class GatedRunner:
    """A job function that reports progress and then waits until the test opens its gate."""

    def __init__(self):
        self.started = threading.Event()
        self.gate = threading.Event()
        self.ran: list[str] = []

    def __call__(self, train_job, progress, should_stop):
        self.ran.append(train_job.job_id)
        progress(1, train_job.steps)
        self.started.set()
        deadline = time.monotonic() + WAIT
        while not self.gate.wait(0.01):
            if should_stop():
                from learner.online import UpdateCancelled

                raise UpdateCancelled("stopped")
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
        progress(train_job.steps, train_job.steps)
        return {"image_id": train_job.image_id, "round_id": train_job.round_id}


def test_a_newer_round_supersedes_the_queued_job_of_the_same_image():
    runner = GatedRunner()
    events = []
    executor = EmbeddedExecutor(runner, on_change=lambda s: events.append((s.job_id, str(s.state))))
    try:
        first = executor.submit(job("a", "1"))
        assert runner.started.wait(WAIT)
        second = executor.submit(job("a", "2"))
        other = executor.submit(job("b", "1"))
        third = executor.submit(job("a", "3"))
        assert executor.status(first).state == JobState.RUNNING
        assert executor.status(second).state == JobState.SUPERSEDED
        assert executor.status(second).superseded_by == third
        assert executor.queue_depth() == 2
        runner.gate.set()
        for job_id in (first, third, other):
            assert executor.wait(job_id, WAIT).state == JobState.SUCCEEDED
        # The newer round took the superseded job's place, ahead of image b.
        assert runner.ran == [first, third, other]
        assert executor.status(third).result == {"image_id": "a", "round_id": "3"}
    finally:
        executor.shutdown(wait=True, timeout=WAIT)
    assert (second, "superseded") in events
    assert [state for job_id, state in events if job_id == first][:2] == ["queued", "running"]
    assert [state for job_id, state in events if job_id == third][-1] == "succeeded"


def test_an_accept_job_stops_the_running_round_job_of_its_image_only():
    runner = GatedRunner()
    executor = EmbeddedExecutor(runner)
    try:
        round_a = executor.submit(job("a", "1"))
        assert runner.started.wait(WAIT)
        accept_b = executor.submit(job("b", "accept-b", accepted_label_path="b.npy"))
        assert executor.status(round_a).state == JobState.RUNNING  # another image's accept waits
        accept_a = executor.submit(job("a", "accept-a", accepted_label_path="a.npy"))
        stopped = executor.wait(round_a, WAIT)
        assert stopped.state == JobState.CANCELLED and stopped.superseded_by == accept_a
        assert "superseded by accept job" in stopped.error
        runner.gate.set()
        for job_id in (accept_b, accept_a):
            assert executor.wait(job_id, WAIT).state == JobState.SUCCEEDED
    finally:
        executor.shutdown(wait=True, timeout=WAIT)


def test_a_failing_job_is_captured_and_the_worker_carries_on(tmp_path):
    registry_root = tmp_path / "registry"
    new_registry(registry_root)
    files = write_project_files(tmp_path / "files", 1, "a")
    executor = EmbeddedExecutor()
    try:
        broken = executor.submit(job("a", image_path=str(tmp_path / "missing.nii.gz"), registry_root=str(registry_root)))
        working = executor.submit(job(
            "b", image_path=files["image_path"], proxy_labels_path=files["label_path"],
            registry_root=str(registry_root), replay_root=str(tmp_path / "replay"), settings={"size": 32},
        ))
        failed = executor.wait(broken, WAIT)
        assert failed.state == JobState.FAILED
        assert "FileNotFoundError" in failed.error and "missing.nii.gz" in failed.error
        done = executor.wait(working, WAIT)
        assert done.state == JobState.SUCCEEDED, done.error
        assert done.result["version"] == 1 and done.result["steps"] == 5
        assert (done.step, done.total) == (5, 5)
    finally:
        executor.shutdown(timeout=WAIT)


def test_progress_of_a_real_job_is_reported_step_by_step_and_its_layers_give_way(tmp_path):
    registry_root = tmp_path / "registry"
    new_registry(registry_root)
    files = write_project_files(tmp_path / "files", 2, "a")
    progress = []
    gave_way = []  # the threads that the job's layers gave way from (learner.yielding)
    executor = EmbeddedExecutor(on_change=lambda s: progress.append((str(s.state), s.step)), progress_interval=0.0,
                                give_way=lambda: gave_way.append(threading.current_thread().name))
    try:
        job_id = executor.submit(job(
            "a", steps=6, image_path=files["image_path"], proxy_labels_path=files["label_path"],
            registry_root=str(registry_root), settings={"size": 32},
        ))
        assert executor.wait(job_id, WAIT).state == JobState.SUCCEEDED
    finally:
        executor.shutdown(timeout=WAIT)
    # Every module forward and every gradient of each step (learner.yielding): far more than one per step.
    assert len(gave_way) > 6 * 10 and set(gave_way) == {"scribbleflow-train"}
    running_steps = [step for state, step in progress if state == "running"]
    assert running_steps == [0, 1, 2, 3, 4, 5, 6]
    assert progress[0] == ("queued", 0) and progress[-1] == ("succeeded", 6)


def test_cancel_a_queued_and_a_running_job():
    runner = GatedRunner()
    executor = EmbeddedExecutor(runner)
    try:
        running = executor.submit(job("a"))
        assert runner.started.wait(WAIT)
        queued = executor.submit(job("b"))
        assert executor.cancel(queued) is True
        assert executor.status(queued).state == JobState.CANCELLED
        assert executor.cancel(running) is True
        assert executor.wait(running, WAIT).state == JobState.CANCELLED
        assert executor.cancel(running) is False
        assert runner.ran == [running]
        with pytest.raises(UnknownJob):
            executor.status("no-such-job")
    finally:
        executor.shutdown(timeout=WAIT)


def test_the_queue_is_bounded_and_shutdown_cancels_what_waits():
    runner = GatedRunner()
    executor = EmbeddedExecutor(runner, max_queued=2)
    running = executor.submit(job("a"))
    assert runner.started.wait(WAIT)
    waiting = [executor.submit(job("b")), executor.submit(job("c"))]
    with pytest.raises(QueueFull):
        executor.submit(job("d"))
    executor.submit(job("b", "2"))  # coalescing needs no free slot
    executor.shutdown(wait=True, timeout=WAIT)
    assert executor.status(running).state == JobState.CANCELLED
    assert all(executor.status(j).state.finished for j in waiting)
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(job("e"))


def consolidation(project_id: str = "p", round_id: str = "consolidate-1") -> TrainJob:
    return TrainJob(project_id=project_id, image_id=CONSOLIDATION_IMAGE_ID, round_id=round_id, image_path=None,
                    num_classes=2, steps=5)


def test_accept_jobs_of_any_project_run_before_the_jobs_queued_before_them():
    runner = GatedRunner()
    executor = EmbeddedExecutor(runner)
    try:
        running = executor.submit(consolidation("p"))
        assert runner.started.wait(WAIT)
        earlier = [executor.submit(job("a", "1")), executor.submit(consolidation("q"))]
        accept_b = executor.submit(job("b", "accept-b", project_id="r", accepted_label_path="b.npy"))
        accept_c = executor.submit(job("c", "accept-c", project_id="q", accepted_label_path="c.npy"))
        assert executor.status(running).state == JobState.RUNNING  # another project's accept does not stop it
        runner.gate.set()
        for job_id in (running, *earlier, accept_b, accept_c):
            executor.wait(job_id, WAIT)
        # Project q's accept cancelled q's queued consolidation; r's accept ran first although queued later.
        assert executor.status(earlier[1]).state == JobState.CANCELLED
        assert runner.ran == [running, accept_b, accept_c, earlier[0]]
    finally:
        executor.shutdown(wait=True, timeout=WAIT)


def test_an_accept_job_ends_the_consolidation_jobs_of_its_project_only():
    runner = GatedRunner()
    executor = EmbeddedExecutor(runner)
    try:
        running = executor.submit(consolidation())
        assert runner.started.wait(WAIT)
        round_a = executor.submit(job("a", "1"))  # a round job waits behind consolidation
        other_project = executor.submit(consolidation("q"))
        queued = executor.submit(consolidation(round_id="consolidate-2"))
        assert executor.status(running).state == JobState.RUNNING
        assert [executor.status(j).state for j in (round_a, other_project, queued)] == [JobState.QUEUED] * 3

        accept_a = executor.submit(job("a", "accept-a", accepted_label_path="a.npy"))
        stopped = executor.wait(running, WAIT)
        assert stopped.state == JobState.CANCELLED and stopped.superseded_by == accept_a
        assert "superseded by accept job" in stopped.error
        cancelled = executor.status(queued)
        assert cancelled.state == JobState.CANCELLED and cancelled.superseded_by == accept_a
        runner.gate.set()
        for job_id in (accept_a, other_project):
            assert executor.wait(job_id, WAIT).state == JobState.SUCCEEDED
        # The round job of image a was replaced by its accept job (same image, still queued).
        assert executor.status(round_a).state == JobState.SUPERSEDED
        assert queued not in runner.ran
    finally:
        executor.shutdown(wait=True, timeout=WAIT)


def test_the_worker_preloads_before_its_first_job_and_a_job_queued_meanwhile_waits():
    preloading, preloaded = threading.Event(), threading.Event()
    preload_threads = []

    def preload():
        preload_threads.append(threading.current_thread().name)
        preloading.set()
        assert preloaded.wait(WAIT)

    runner = GatedRunner()
    runner.gate.set()
    executor = EmbeddedExecutor(runner, preload=preload)
    try:
        assert preloading.wait(WAIT)
        queued = executor.submit(job("a"))
        time.sleep(0.2)  # long enough for a worker that took jobs during the preload to have started this one
        assert executor.status(queued).state == JobState.QUEUED and runner.ran == []
        preloaded.set()
        assert executor.wait(queued, WAIT).state == JobState.SUCCEEDED
    finally:
        preloaded.set()
        executor.shutdown(wait=True, timeout=WAIT)
    assert preload_threads == ["scribbleflow-train"]


def test_a_failing_preload_is_logged_and_the_jobs_still_run(caplog):
    def preload():
        raise RuntimeError("no imports today")

    runner = GatedRunner()
    runner.gate.set()
    executor = EmbeddedExecutor(runner, preload=preload)
    try:
        assert executor.wait(executor.submit(job("a")), WAIT).state == JobState.SUCCEEDED
    finally:
        executor.shutdown(wait=True, timeout=WAIT)
    assert "preloading the training imports failed" in caplog.text and "no imports today" in caplog.text


def test_a_celery_worker_preloads_in_its_parent_before_the_pool_forks(monkeypatch):
    from celery import signals

    import learner.worker

    calls = []
    monkeypatch.setattr(learner.worker, "preload_training_imports", lambda: calls.append("preload"))
    signals.worker_init.send(sender=None)
    assert calls == ["preload"]

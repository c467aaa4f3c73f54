"""The server's thread policy: a training step gets fewer torch threads while a round computes."""

from __future__ import annotations

import threading
import time

import torch

from server.context import ThreadPolicy


def in_thread(function):
    """Run ``function`` in a fresh thread (torch thread counts are per thread); its result."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function()))
    thread.start()
    thread.join(timeout=30)
    return result["value"]


def training_step_threads(policy: ThreadPolicy) -> int:
    policy.before_training_step()
    return torch.get_num_threads()


def test_training_threads_follow_rounds_in_flight():
    policy = ThreadPolicy(training_threads=2, training_threads_during_rounds=1, cpus=2, max_pause_seconds=0.2)
    previous = torch.get_num_threads()
    try:
        assert in_thread(lambda: training_step_threads(policy)) == 2
        with policy.interactive():
            assert policy.in_flight == 1
            assert torch.get_num_threads() == 1  # training ran a step just now: one CPU is left
            started = time.monotonic()
            assert in_thread(lambda: training_step_threads(policy)) == 1  # waited 0.2 s, then went on
            assert time.monotonic() - started >= 0.2
        assert policy.in_flight == 0
        assert in_thread(lambda: training_step_threads(policy)) == 2
    finally:
        torch.set_num_threads(previous)


def test_a_training_step_waits_for_the_round_in_flight():
    policy = ThreadPolicy(training_threads=2, training_threads_during_rounds=1, cpus=2, max_pause_seconds=30)
    step_started = {}

    def step() -> int:
        threads = training_step_threads(policy)
        step_started["at"] = time.monotonic()
        return threads

    previous = torch.get_num_threads()
    try:
        with policy.interactive():
            waiting = threading.Thread(target=lambda: step_started.setdefault("threads", step()))
            waiting.start()
            time.sleep(0.3)
            assert "at" not in step_started  # still waiting
            round_ended = time.monotonic()
        waiting.join(timeout=30)
        assert step_started["at"] >= round_ended and step_started["threads"] == 2
    finally:
        torch.set_num_threads(previous)


def test_requests_use_every_cpu_when_no_training_runs():
    policy = ThreadPolicy(training_threads=2, training_threads_during_rounds=1, cpus=2, training_idle_seconds=60)
    previous = torch.get_num_threads()
    try:
        assert policy.interactive_threads() == 2  # no step yet
        in_thread(lambda: training_step_threads(policy))
        assert policy.interactive_threads() == 1
        idle = ThreadPolicy(training_threads=2, cpus=2, training_idle_seconds=0.0)
        in_thread(lambda: training_step_threads(idle))
        assert idle.interactive_threads() == 2  # the last step is older than the idle time
    finally:
        torch.set_num_threads(previous)


def test_training_gives_way_between_layers_while_a_request_is_in_flight():
    from learner.yielding import yielding_to

    policy = ThreadPolicy(training_threads=1, cpus=2, max_pause_seconds=30)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    finished = {}

    def forward() -> None:
        with yielding_to(policy.give_way):
            model(torch.ones(1, 4))
        finished["at"] = time.monotonic()

    previous = torch.get_num_threads()
    try:
        with policy.interactive():
            thread = threading.Thread(target=forward)
            thread.start()
            time.sleep(0.3)
            assert "at" not in finished  # held between layers, not only between steps
            round_ended = time.monotonic()
        thread.join(timeout=30)
        assert finished["at"] >= round_ended
    finally:
        torch.set_num_threads(previous)


def test_the_pause_budget_runs_out_and_refills():
    policy = ThreadPolicy(training_threads=1, cpus=2, max_pause_seconds=1.0)
    previous = torch.get_num_threads()
    try:
        with policy.interactive():
            started = time.monotonic()
            in_thread(policy.give_way)  # waits out the whole budget
            first = time.monotonic() - started
            started = time.monotonic()
            in_thread(policy.before_training_step)  # the step's wait draws on the same budget: spent
            second = time.monotonic() - started
            time.sleep(0.6)  # refills at one second per second
            started = time.monotonic()
            in_thread(policy.give_way)
            third = time.monotonic() - started
        started = time.monotonic()
        in_thread(policy.give_way)  # nothing in flight: no wait
        idle = time.monotonic() - started
    finally:
        torch.set_num_threads(previous)
    assert first >= 1.0 and second < 0.4 and 0.5 <= third < 1.0 and idle < 0.4


def test_the_server_hands_its_policy_to_embedded_training():
    from server.context import executor_factory
    from server.settings import Settings

    policy = ThreadPolicy(cpus=2)
    factory = executor_factory(Settings(broker_url=None), policy)
    assert factory.keywords["give_way"] == policy.give_way
    assert factory.keywords["before_step"] == policy.before_training_step


def test_a_compute_slot_held_by_a_thread_lets_it_in_again_and_keeps_others_out():
    from server.context import ComputeSlots

    slots = ComputeSlots(1)
    other_got_in = threading.Event()

    def other() -> None:
        with slots():
            other_got_in.set()

    with slots():
        with slots():  # the round's own prediction inside the round's slot: no deadlock
            pass
        thread = threading.Thread(target=other)
        thread.start()
        assert not other_got_in.wait(0.3)  # the one slot is still this thread's
    assert other_got_in.wait(10)
    thread.join(timeout=10)
    with slots():  # free again after both
        pass

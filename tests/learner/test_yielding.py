"""Background training gives way between layers (``learner.yielding``), in its own thread only."""

from __future__ import annotations

import threading
import time

import torch

from learner.yielding import pause_in_backward, yielding_to


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_every_forward_and_every_gradient_calls_the_pause_of_this_thread_only():
    model = small_model()
    calls: list[str] = []
    other_thread_calls: list[str] = []

    def other_thread() -> None:  # runs while the main thread is inside yielding_to
        model(torch.ones(1, 4))
        other_thread_calls.extend(calls)

    with yielding_to(lambda: calls.append(threading.current_thread().name)):
        model(torch.ones(3, 4))
        forward_calls = len(calls)
        before = len(calls)
        thread = threading.Thread(target=other_thread, name="request")
        thread.start()
        thread.join(timeout=30)
        assert len(calls) == before  # the other thread's forward did not pause
        with pause_in_backward(model.parameters()):
            model(torch.ones(3, 4)).sum().backward()
    # Sequential + Linear + ReLU + Linear: 4 module forwards; 4 parameters get gradients.
    assert forward_calls == 4
    assert len(calls) == 4 + 4 + 4
    assert set(calls) == {threading.main_thread().name}
    model(torch.ones(1, 4))  # after the block: no pause
    with pause_in_backward(model.parameters()):  # outside yielding_to: nothing to call
        model(torch.ones(1, 4)).sum().backward()
    assert len(calls) == 12
    assert all(not p._backward_hooks for p in model.parameters())  # the gradient hooks were removed


def test_a_forward_waits_inside_while_the_pause_holds_it():
    model = small_model()
    release = threading.Event()
    finished = {}

    def train() -> None:
        with yielding_to(lambda: release.wait(timeout=30)):
            model(torch.ones(2, 4))
        finished["at"] = time.monotonic()

    thread = threading.Thread(target=train)
    thread.start()
    time.sleep(0.3)
    assert "at" not in finished  # held at the first layer
    released_at = time.monotonic()
    release.set()
    thread.join(timeout=30)
    assert finished["at"] >= released_at

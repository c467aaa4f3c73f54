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

    with yielding_to(lambda: calls.append(threading.current_thread().name)):
        model(torch.ones(3, 4))
        forward_calls = len(calls)
        thread = threading.Thread(target=lambda: model(torch.ones(1, 4)), name="request")
        thread.start()
        thread.join(timeout=30)
        assert len(calls) == forward_calls  # the other thread's forward did not pause
        with yielding_to(None):  # an inner block without pauses
            model(torch.ones(1, 4))
        assert len(calls) == forward_calls
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


def test_the_gradient_hooks_go_away_when_the_block_raises_and_leave_gradients_unchanged():
    torch.manual_seed(0)
    model = small_model()
    inputs = torch.randn(5, 4)
    model(inputs).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    calls = []
    with yielding_to(lambda: calls.append(1)):
        try:
            with pause_in_backward(model.parameters()):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model(inputs).float().square().sum()
                loss.backward()
                raise RuntimeError("the step failed")
        except RuntimeError:
            pass
    assert all(not p._backward_hooks for p in model.parameters())
    model.zero_grad()
    with yielding_to(lambda: calls.append(1)), pause_in_backward(model.parameters()):
        model(inputs).square().sum().backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), plain, strict=True))


def test_an_online_update_gives_way_in_every_forward_and_backward_pass():
    from learner.networks import build_network
    from learner.online import OnlineExample, OnlineSettings, prepare_image, train_online
    from tests.helpers import disc_volume, tiny_config

    torch.manual_seed(1)
    model = build_network(tiny_config(2))
    image, label = disc_volume(4, shape=(3, 32, 32))
    settings = OnlineSettings(size=32, batch_size=2)
    prepared = prepare_image(OnlineExample(image, 2, proxy_labels=label), model, settings)
    forwards = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: forwards.append(1))
    pauses = []
    try:
        with yielding_to(lambda: pauses.append(1)):
            train_online(model, prepared, settings, steps=2, num_classes=2)
    finally:
        handle.remove()
    parameters = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(pauses) >= len(forwards) + 2 * parameters  # every module forward, every gradient of both steps

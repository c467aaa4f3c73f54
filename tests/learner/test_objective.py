"""Every training objective returns a finite total whose gradients reach the network."""

from __future__ import annotations

import pytest
import torch

from learner.networks import build_network
from learner.objective import METHODS, ObjectiveWeights, build_objective, network_config_for, rampup
from learner.train import training_step
from registration.io.volume import UNLABELLED

NUM_CLASSES = 3
SMALL = dict(channels=(4, 8, 16, 32), attention_dim=8)


def _batch(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(2, size, size, dtype=torch.long)
    label[:, 8:24, 8:24] = 2
    label[:, 12:20, 12:20] = 1
    image = label.float() / 2 + 0.05 * torch.randn(2, 1, size, size, generator=g)[:, 0]
    scribble = torch.full_like(label, UNLABELLED)
    scribble[:, 16, 13:19] = 1
    scribble[:, 9, 10:22] = 2
    scribble[:, 2, 2:30] = 0
    target = torch.nn.functional.one_hot(label, NUM_CLASSES).permute(0, 3, 1, 2).float() * 0.8 + 0.2 / NUM_CLASSES
    weight = torch.rand(2, size, size, generator=g)
    return {"image": image[:, None], "scribble": scribble, "label": label, "target": target, "weight": weight}


@pytest.mark.parametrize("method", METHODS)
def test_objective_total_is_finite_and_sends_gradients(method):
    torch.manual_seed(0)
    model = build_network(network_config_for(method, NUM_CLASSES, **SMALL))
    objective = build_objective(method, NUM_CLASSES)
    objective.bind(model)
    objective.progress = 0.5
    batch = _batch()
    output = model(batch["image"])
    losses = objective(output, batch, objective.teacher_output(batch))
    assert torch.isfinite(losses["total"]) and losses["total"].ndim == 0
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_method_parts():
    expected = {
        "pce": {"pce"},
        "pce_crf": {"pce", "crf"},
        "attention": {"pce", "crf", "attentive"},
        "distill": {"pce", "crf", "distill", "contrastive"},
        "full": {"ce", "dice"},
        "online": {"soft_ce", "dice", "pce", "crf"},
    }
    batch = _batch()
    for method, parts in expected.items():
        model = build_network(network_config_for(method, NUM_CLASSES, **SMALL))
        objective = build_objective(method, NUM_CLASSES)
        objective.bind(model)
        losses = objective(model(batch["image"]), batch, objective.teacher_output(batch))
        assert set(losses) == parts | {"total"}, method


def test_weights_change_the_total():
    batch = _batch()
    torch.manual_seed(0)
    model = build_network(network_config_for("pce_crf", NUM_CLASSES, **SMALL))
    output = model(batch["image"])
    plain = build_objective("pce_crf", NUM_CLASSES)(output, batch)
    heavier = build_objective("pce_crf", NUM_CLASSES, ObjectiveWeights(crf=1.0))(output, batch)
    expected = plain["pce"] + 1.0 * plain["crf"]
    assert torch.allclose(heavier["total"], expected)


def test_network_config_per_method():
    assert network_config_for("attention", 4).attention_after == (1,)
    assert network_config_for("pce", 4).attention_after == ()
    assert network_config_for("distill", 4).deep_supervision
    assert not network_config_for("full", 4).deep_supervision
    with pytest.raises(ValueError):
        build_objective("nonsense", 4)


def test_rampup():
    assert rampup(0.0, 0.3) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert rampup(0.15, 0.3) < rampup(0.3, 0.3) == 1.0 == rampup(0.9, 0.3)


def test_distill_teacher_follows_the_student_through_training_steps():
    torch.manual_seed(0)
    model = build_network(network_config_for("distill", NUM_CLASSES, **SMALL))
    objective = build_objective("distill", NUM_CLASSES)
    with pytest.raises(RuntimeError):
        objective.teacher_output(_batch())
    objective.bind(model)
    teacher_before = [p.clone() for p in objective.teacher.model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = training_step(model, objective, _batch(), optimizer)
    assert set(losses) >= {"total", "distill"} and all(isinstance(v, float) for v in losses.values())
    moved = [not torch.equal(a, b) for a, b in zip(teacher_before, objective.teacher.model.parameters(), strict=True)]
    assert any(moved)

"""Unit tests of the scribble losses: hand-computed values, invariances, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from learner.losses import (
    AttentiveSimilarityLoss,
    ClassContrastiveLoss,
    EMATeacher,
    MaskedGatedCRFLoss,
    MultiScaleDistillationLoss,
    PartialCrossEntropyLoss,
    SoftDiceLoss,
    SoftTargetCrossEntropyLoss,
)
from learner.losses.crf import crf_kernel_mass
from learner.networks import AttentionState, NetworkConfig, SegmentationOutput, build_network
from registration.io.volume import UNLABELLED

U = UNLABELLED


def _all_finite_grads(*tensors: torch.Tensor) -> bool:
    return all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in tensors)


# ----------------------------------------------------------------------------- partial CE


def test_pce_hand_computed_ignores_unlabelled_pixel():
    # 1 x 2 x 2 x 2 logits: pixel (0,0) [0, 0] label 0 -> p = 1/2; (0,1) [log 3, 0] label 0
    # -> p = 3/4; (1,0) unlabelled; (1,1) [0, log 3] label 0 -> p = 1/4.
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 1] = math.log(3.0)
    logits[0, 1, 1, 1] = math.log(3.0)
    logits[0, :, 1, 0] = torch.tensor([5.0, -5.0])
    scribble = torch.tensor([[[0, 0], [U, 0]]])
    expected = (math.log(2.0) + math.log(4.0 / 3.0) + math.log(4.0)) / 3.0
    assert PartialCrossEntropyLoss()(logits, scribble).item() == pytest.approx(expected, rel=1e-6)


def test_pce_unchanged_by_logits_at_unlabelled_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, requires_grad=True)
    scribble = torch.randint(0, 4, (2, 6, 5))
    scribble[torch.rand(2, 6, 5) < 0.6] = U
    loss = PartialCrossEntropyLoss()(logits, scribble)
    changed = logits.detach().clone()
    changed[(scribble == U).unsqueeze(1).expand_as(changed)] = 100.0 * torch.randn(
        int((scribble == U).sum()) * 4
    )
    assert PartialCrossEntropyLoss()(changed, scribble).item() == pytest.approx(
        loss.item(), rel=1e-6
    )
    loss.backward()
    assert _all_finite_grads(logits)
    assert logits.grad[(scribble == U).unsqueeze(1).expand_as(logits)].abs().max() == 0
    assert logits.grad[(scribble != U).unsqueeze(1).expand_as(logits)].abs().max() > 0


def test_pce_without_labels_is_zero_and_differentiable():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = PartialCrossEntropyLoss()(logits, torch.full((1, 4, 4), U))
    loss.backward()
    assert loss.item() == 0.0
    assert _all_finite_grads(logits)


# ----------------------------------------------------------------------------- masked CRF


def _dense_crf_reference(probs, image, unlabelled, radius, sigma_xy, sigma_i, spacing=1.0):
    """Brute force over all pixel pairs (N x N): the formula of the docstring."""
    batch, _, height, width = probs.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.reshape(-1).double(), xs.reshape(-1).double()
    dy = ys[:, None] - ys[None, :]
    dx = xs[:, None] - xs[None, :]
    window = (
        (dy.abs() <= radius) & (dx.abs() <= radius) & ~torch.eye(height * width, dtype=torch.bool)
    )
    total = 0.0
    for b in range(batch):
        p = probs[b].reshape(probs.shape[1], -1).double()
        intensity = image[b].reshape(image.shape[1], -1).double()
        contrast = ((intensity[:, :, None] - intensity[:, None, :]) ** 2).sum(0)
        kernel = torch.exp(
            -(dy**2 + dx**2) * spacing**2 / (2 * sigma_xy**2) - contrast / (2 * sigma_i**2)
        )
        disagreement = 1.0 - p.t() @ p
        m = unlabelled[b].reshape(-1).double()
        total += (m[:, None] * kernel * window * disagreement).sum().item()
    return total / unlabelled.double().sum().item()


def test_crf_two_pixel_hand_computed():
    # Two pixels side by side, intensities 0 and 0.1, probs [1, 0] and [1/2, 1/2].
    # With sigma_xy = 1, sigma_I = 0.1: k = exp(-1/2 - 0.01/0.02) = exp(-1); 1 - p0.p1 = 1/2.
    probs = torch.tensor([[[[1.0, 0.5]], [[0.0, 0.5]]]])
    image = torch.tensor([[[[0.0, 0.1]]]])
    crf = MaskedGatedCRFLoss(radius=1, sigma_xy=1.0, sigma_intensity=0.1)
    both = torch.ones(1, 1, 2, dtype=torch.bool)
    first_only = torch.tensor([[[True, False]]])
    # both unlabelled: (k/2 + k/2) / 2 pixels; only pixel 0: (k/2) / 1 pixel.
    assert crf(probs, image, both).item() == pytest.approx(0.5 * math.exp(-1.0), rel=1e-5)
    assert crf(probs, image, first_only).item() == pytest.approx(0.5 * math.exp(-1.0), rel=1e-5)


def test_crf_matches_dense_reference():
    torch.manual_seed(1)
    probs = torch.randn(2, 3, 7, 9, dtype=torch.double).softmax(1)
    image = torch.rand(2, 2, 7, 9, dtype=torch.double)
    unlabelled = torch.rand(2, 7, 9) < 0.7
    crf = MaskedGatedCRFLoss(radius=2, sigma_xy=1.5, sigma_intensity=0.3)
    expected = _dense_crf_reference(probs, image, unlabelled, 2, 1.5, 0.3)
    assert crf(probs, image, unlabelled).item() == pytest.approx(expected, rel=1e-9)


def test_crf_downsampled_matches_dense_reference_on_pooled_inputs():
    torch.manual_seed(2)
    probs = torch.randn(1, 2, 8, 12, dtype=torch.double).softmax(1)
    image = torch.rand(1, 1, 8, 12, dtype=torch.double)
    unlabelled = torch.ones(1, 8, 12, dtype=torch.bool)
    crf = MaskedGatedCRFLoss(radius=2, sigma_xy=3.0, sigma_intensity=0.2, downsample=2)
    pooled = [F.avg_pool2d(t, 2) for t in (probs, image)]
    expected = _dense_crf_reference(
        pooled[0], pooled[1], torch.ones(1, 4, 6, dtype=torch.bool), 2, 3.0, 0.2, spacing=2.0
    )
    assert crf(probs, image, unlabelled).item() == pytest.approx(expected, rel=1e-9)


def test_crf_zero_for_constant_prediction_positive_otherwise():
    torch.manual_seed(3)
    image = torch.rand(2, 1, 16, 16)
    unlabelled = torch.rand(2, 16, 16) < 0.8
    constant = torch.zeros(2, 4, 16, 16)
    constant[:, 2] = 1.0
    crf = MaskedGatedCRFLoss()
    assert crf(constant, image, unlabelled).item() == pytest.approx(0.0, abs=1e-6)
    two_halves = torch.zeros(2, 4, 16, 16)
    two_halves[:, 0, :, :8] = 1.0
    two_halves[:, 1, :, 8:] = 1.0
    value = crf(two_halves, image, unlabelled).item()
    assert 0.0 < value <= crf_kernel_mass()


def test_crf_gradient_finite_and_only_into_probs():
    torch.manual_seed(4)
    logits = torch.randn(2, 4, 12, 10, requires_grad=True)
    image = torch.rand(2, 1, 12, 10, requires_grad=True)
    unlabelled = torch.rand(2, 12, 10) < 0.5
    loss = MaskedGatedCRFLoss(radius=3)(logits.softmax(1), image, unlabelled)
    loss.backward()
    assert _all_finite_grads(logits)
    assert logits.grad.abs().sum() > 0
    assert image.grad is None


def test_crf_gradient_matches_finite_differences():
    torch.manual_seed(5)
    probs = torch.randn(1, 3, 6, 7, dtype=torch.double).softmax(1).requires_grad_()
    image = torch.rand(1, 1, 6, 7, dtype=torch.double)
    unlabelled = torch.rand(1, 6, 7) < 0.6
    crf = MaskedGatedCRFLoss(radius=2, sigma_intensity=0.4)
    assert torch.autograd.gradcheck(lambda p: crf(p, image, unlabelled), (probs,))


def test_crf_without_unlabelled_pixels_is_zero():
    probs = torch.rand(1, 2, 4, 4, requires_grad=True)
    loss = MaskedGatedCRFLoss()(
        probs, torch.rand(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)
    )
    loss.backward()
    assert loss.item() == 0.0 and _all_finite_grads(probs)


# ----------------------------------------------------------------------------- attentive similarity


def _attention_state(query, key, a, b, height, width):
    return AttentionState(query=query, key=key, scale=a, bias=b, height=height, width=width)


def _dense_attentive_reference(state, probs, radius, sigma, normalisation):
    """Brute force with the full N x N attention: the formula of the docstring."""
    query, key = state.query, state.key
    if query.ndim == 3:
        query, key = query.unsqueeze(1), key.unsqueeze(1)
    batch, _, n, _ = query.shape
    attention = torch.softmax(query @ key.transpose(-1, -2), dim=-1).mean(dim=1)  # (B, N, N)
    weights = torch.sigmoid(state.scale * (attention + attention.transpose(1, 2)) + state.bias)
    ys, xs = torch.meshgrid(torch.arange(state.height), torch.arange(state.width), indexing="ij")
    ys, xs = ys.reshape(-1).double(), xs.reshape(-1).double()
    dy, dx = ys[:, None] - ys[None, :], xs[:, None] - xs[None, :]
    window = (dy.abs() <= radius) & (dx.abs() <= radius) & ~torch.eye(n, dtype=torch.bool)
    gaussian = torch.exp(-(dy**2 + dx**2) / (2 * sigma**2)) * window
    p = F.interpolate(probs, size=(state.height, state.width), mode="area").flatten(2)  # (B, C, N)
    disagreement = 1.0 - p.transpose(1, 2) @ p
    total = (weights * gaussian * disagreement).sum()
    if normalisation == "pairs":
        return total / (batch * window.sum())
    return total / (batch * n)


def test_attentive_two_pixel_hand_computed():
    # 1 x 2 map, D = 1: q = k = [1, 0]. Row 0 logits (1, 0) -> S01 = 1 / (e + 1);
    # row 1 logits (0, 0) -> S10 = 1/2. W01 = W10 = sigmoid(a (S01 + S10) + b), a = 2, b = -1.
    # G = exp(-1 / (2 sigma^2)) with sigma = 1; probs [1, 0] and [1/4, 3/4]: 1 - p0.p1 = 3/4.
    query = torch.tensor([[[1.0], [0.0]]])
    state = _attention_state(query, query.clone(), torch.tensor(2.0), torch.tensor(-1.0), 1, 2)
    probs = torch.tensor([[[[1.0, 0.25]], [[0.0, 0.75]]]])
    w = 1.0 / (1.0 + math.exp(-(2.0 * (1.0 / (math.e + 1.0) + 0.5) - 1.0)))
    per_pair = w * math.exp(-0.5) * 0.75
    pairs = AttentiveSimilarityLoss(radius=1, sigma=1.0)(state, probs)
    pixels = AttentiveSimilarityLoss(radius=1, sigma=1.0, normalisation="pixels")(state, probs)
    assert pairs.item() == pytest.approx(per_pair, rel=1e-6)  # 2 ordered pairs, equal terms
    assert pixels.item() == pytest.approx(2 * per_pair / 2, rel=1e-6)  # sum over pairs / 2 pixels


@pytest.mark.parametrize("normalisation", ["pairs", "pixels"])
@pytest.mark.parametrize("heads", [None, 2])
def test_attentive_matches_dense_reference(normalisation, heads):
    torch.manual_seed(6)
    batch, height, width, dim = 2, 8, 7, 4
    shape = (batch, height * width, dim) if heads is None else (batch, heads, height * width, dim)
    query = torch.randn(shape, dtype=torch.double)
    key = torch.randn(shape, dtype=torch.double)
    a, b = torch.tensor(3.0, dtype=torch.double), torch.tensor(-0.5, dtype=torch.double)
    probs = torch.randn(batch, 3, 16, 14, dtype=torch.double).softmax(1)
    state = _attention_state(query, key, a, b, height, width)
    loss = AttentiveSimilarityLoss(radius=2, sigma=1.5, normalisation=normalisation)(state, probs)
    expected = _dense_attentive_reference(state, probs, 2, 1.5, normalisation)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_attentive_gradients_reach_attention_and_prediction():
    torch.manual_seed(7)
    query = torch.randn(2, 64, 8, requires_grad=True)
    key = torch.randn(2, 64, 8, requires_grad=True)
    a = torch.tensor(5.0, requires_grad=True)
    b = torch.tensor(0.0, requires_grad=True)
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    state = _attention_state(query, key, a, b, 8, 8)
    AttentiveSimilarityLoss()(state, logits.softmax(1)).backward()
    assert _all_finite_grads(query, key, a, b, logits)
    for tensor in (query, key, a, b, logits):
        assert tensor.grad.abs().sum() > 0


def test_attentive_gradients_match_dense_reference():
    torch.manual_seed(8)
    query = torch.randn(1, 30, 3, dtype=torch.double, requires_grad=True)
    key = torch.randn(1, 30, 3, dtype=torch.double, requires_grad=True)
    a = torch.tensor(4.0, dtype=torch.double, requires_grad=True)
    b = torch.tensor(0.3, dtype=torch.double, requires_grad=True)
    probs = torch.randn(1, 2, 5, 6, dtype=torch.double).softmax(1).requires_grad_()
    inputs = (query, key, a, b, probs)
    state = _attention_state(query, key, a, b, 5, 6)
    windowed = torch.autograd.grad(
        AttentiveSimilarityLoss(radius=2, sigma=2.0)(state, probs), inputs
    )
    dense = torch.autograd.grad(_dense_attentive_reference(state, probs, 2, 2.0, "pairs"), inputs)
    for got, want in zip(windowed, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_attentive_trains_the_network_attention_block():
    torch.manual_seed(9)
    model = build_network(NetworkConfig(channels=(4, 8, 16), attention_after=(0,), attention_dim=8))
    output = model(torch.randn(2, 1, 16, 16))
    loss = AttentiveSimilarityLoss()(output.attention[0], output.logits.softmax(1))
    loss.backward()
    block = model.attention["0"]
    for parameter in (
        block.to_qkv.weight,
        block.similarity_scale,
        block.similarity_bias,
        model.head.weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


@pytest.mark.slow
def test_attentive_memory_at_batch_12_on_64x64_maps(tmp_path):
    """The dense N x N version needs > 3 GB here (805 MB per 12 x 4096 x 4096 float tensor)."""
    import subprocess
    import sys

    script = tmp_path / "attentive_memory.py"
    script.write_text(
        "import resource, torch\n"
        "from learner.losses import AttentiveSimilarityLoss\n"
        "from learner.networks import AttentionState\n"
        "torch.manual_seed(0)\n"
        "q = torch.randn(12, 4096, 64, requires_grad=True)\n"
        "k = torch.randn(12, 4096, 64, requires_grad=True)\n"
        "a = torch.tensor(1.0, requires_grad=True); b = torch.tensor(0.0, requires_grad=True)\n"
        "logits = torch.randn(12, 4, 256, 256, requires_grad=True)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "state = AttentionState(q * 0.125, k, a, b, 64, 64)\n"
        "AttentiveSimilarityLoss()(state, logits.softmax(1)).backward()\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "assert torch.isfinite(q.grad).all() and torch.isfinite(logits.grad).all()\n"
        "print(before // 1024, after // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=True
    )
    before_mb, after_mb = (int(v) for v in result.stdout.split())
    assert after_mb < 2048, f"peak RSS {after_mb} MB"
    assert after_mb - before_mb < 1024, f"loss added {after_mb - before_mb} MB"


# ----------------------------------------------------------------------------- distillation


def _output(logits, aux=()):
    return SegmentationOutput(logits=logits, aux_logits=list(aux))


def test_distillation_hand_computed_with_aux_scale():
    # Final scale: student [0, 0], teacher [log 3, 0] -> t = (3/4, 1/4), q = (1/2, 1/2).
    # Aux scale: identical logits -> KL 0. Loss = mean of the two scales.
    student = _output(torch.zeros(1, 2, 1, 1), [torch.tensor([[[[2.0]], [[1.0]]]])])
    teacher_logits = torch.tensor([[[[math.log(3.0)]], [[0.0]]]])
    teacher = _output(teacher_logits, [torch.tensor([[[[2.0]], [[1.0]]]])])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert MultiScaleDistillationLoss()(student, teacher).item() == pytest.approx(kl / 2, rel=1e-6)


def test_distillation_temperature_hand_computed():
    # T = 2: teacher [2 log 3, 0] / 2 -> t = (3/4, 1/4); student [0, 0] -> q = (1/2, 1/2); times T^2.
    student = _output(torch.zeros(1, 2, 1, 1))
    teacher = _output(torch.tensor([[[[2.0 * math.log(3.0)]], [[0.0]]]]))
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert MultiScaleDistillationLoss(temperature=2.0)(student, teacher).item() == pytest.approx(
        4 * kl, rel=1e-6
    )


def test_distillation_zero_when_equal_positive_otherwise_and_student_only_gradient():
    torch.manual_seed(10)
    logits = torch.randn(2, 3, 8, 8)
    aux = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    loss_fn = MultiScaleDistillationLoss()
    assert loss_fn(_output(logits, aux), _output(logits, aux)).item() == pytest.approx(
        0.0, abs=1e-6
    )
    student_logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    student_aux = [t.clone().requires_grad_() for t in aux]
    teacher_logits = logits.clone().requires_grad_()
    loss = loss_fn(_output(student_logits, student_aux), _output(teacher_logits, aux))
    loss.backward()
    assert loss.item() > 0
    assert _all_finite_grads(student_logits, *student_aux)
    assert teacher_logits.grad is None


def test_distillation_teacher_without_aux_uses_its_pooled_final_prediction():
    torch.manual_seed(11)
    teacher_logits = torch.randn(1, 3, 8, 8)
    pooled = F.avg_pool2d(teacher_logits.softmax(1), 2)
    student = _output(teacher_logits.clone(), [pooled.log()])  # log-probs as logits: same softmax
    assert MultiScaleDistillationLoss()(student, _output(teacher_logits)).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_ema_teacher_update_follows_the_moving_average():
    torch.manual_seed(12)
    student = build_network(NetworkConfig(channels=(4, 8), num_classes=2))
    teacher = EMATeacher(student, decay=0.9)
    assert all(not p.requires_grad for p in teacher.model.parameters())
    before = [p.detach().clone() for p in teacher.model.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student)  # first update: alpha = min(0.9, 1 - 1/2) = 0.5
    for old, new, current in zip(
        before, teacher.model.parameters(), student.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * current)
    previous = [p.detach().clone() for p in teacher.model.parameters()]
    for _ in range(20):
        teacher.update(student)
    alpha_last = min(0.9, 1.0 - 1.0 / (21 + 1))
    assert alpha_last == 0.9
    assert all(bool(p.requires_grad) for p in student.parameters())
    # The teacher moved towards the (fixed) student every step.
    for old, new, current in zip(
        previous, teacher.model.parameters(), student.parameters(), strict=True
    ):
        assert (new - current).abs().sum() <= (old - current).abs().sum()
    out = teacher(torch.randn(2, 1, 8, 8))
    assert isinstance(out, SegmentationOutput) and not out.logits.requires_grad


def test_ema_teacher_state_round_trip():
    student = build_network(NetworkConfig(channels=(4, 8), num_classes=2))
    teacher = EMATeacher(student, decay=0.95)
    teacher.update(student)
    restored = EMATeacher(build_network(NetworkConfig(channels=(4, 8), num_classes=2)), decay=0.5)
    restored.load_state_dict(teacher.state_dict())
    assert restored.updates == 1 and restored.decay == 0.95
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(restored(x).logits, teacher(x).logits)


# ----------------------------------------------------------------------------- contrastive


def test_contrastive_hand_computed_and_ignores_unconfident_pixels():
    # Pixel 0 feature (1, 0) scribbled 0, pixel 1 feature (0, 3) scribbled 1 -> prototypes
    # (1, 0), (0, 1). tau = 1: each pixel CE = log(1 + exp(0 - 1)). Pixel 2 is unscribbled and
    # unconfident (max prob 0.6 < 0.8): it must not count.
    features = torch.tensor([[[[1.0, 0.0, -5.0]], [[0.0, 3.0, 2.0]]]], requires_grad=True)
    probs = torch.tensor([[[[0.5, 0.5, 0.6]], [[0.5, 0.5, 0.4]]]])
    scribble = torch.tensor([[[0, 1, U]]])
    loss = ClassContrastiveLoss(temperature=1.0, confidence=0.8)(features, probs, scribble)
    assert loss.item() == pytest.approx(math.log(1.0 + math.exp(-1.0)), rel=1e-6)
    loss.backward()
    assert _all_finite_grads(features)
    assert features.grad[..., 2].abs().max() == 0


def test_contrastive_uses_confident_predictions_as_labels():
    # Same as above, but pixel 1 is unscribbled with a confident class-1 prediction.
    features = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]]]])
    probs = torch.tensor([[[[0.5, 0.1]], [[0.5, 0.9]]]])
    scribble = torch.tensor([[[0, U]]])
    loss = ClassContrastiveLoss(temperature=1.0, confidence=0.8)(features, probs, scribble)
    assert loss.item() == pytest.approx(math.log(1.0 + math.exp(-1.0)), rel=1e-6)


def test_contrastive_single_class_is_zero_and_sampling_is_bounded():
    features = torch.randn(2, 8, 16, 16, requires_grad=True)
    probs = torch.full((2, 3, 16, 16), 1.0 / 3.0)
    one_class = torch.full((2, 16, 16), U)
    one_class[:, 3, :] = 2
    loss = ClassContrastiveLoss()(features, probs, one_class)
    loss.backward()
    assert loss.item() == 0.0 and _all_finite_grads(features)

    torch.manual_seed(13)
    scribble = torch.randint(0, 3, (2, 16, 16))
    features.grad = None
    loss = ClassContrastiveLoss(temperature=0.5, max_pixels_per_class=5)(features, probs, scribble)
    loss.backward()
    assert 0.0 < loss.item() <= math.log(3) + 2 / 0.5
    assert int((features.grad.abs().sum(dim=1) > 0).sum()) <= 15  # 5 sampled pixels per class


# ----------------------------------------------------------------------------- soft-target CE


def test_soft_ce_with_hard_targets_equals_cross_entropy():
    torch.manual_seed(14)
    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    target = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    got = SoftTargetCrossEntropyLoss()(logits, target, None)
    assert got.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_soft_ce_weighted_hand_computed_and_zero_weight():
    # Pixel 0: logits (0, 0), target (1/4, 3/4) -> CE log 2, weight 1.
    # Pixel 1: logits (log 3, 0) -> p = (3/4, 1/4), target (1, 0) -> CE log(4/3), weight 1/2.
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.25, 1.0]], [[0.75, 0.0]]]])
    weight = torch.tensor([[[1.0, 0.5]]])
    loss = SoftTargetCrossEntropyLoss()(logits, target, weight)
    assert loss.item() == pytest.approx((math.log(2.0) + 0.5 * math.log(4.0 / 3.0)) / 1.5, rel=1e-6)
    loss.backward()
    assert _all_finite_grads(logits)
    zero = SoftTargetCrossEntropyLoss()(logits, target, torch.zeros(1, 1, 2))
    assert zero.item() == 0.0


# ----------------------------------------------------------------------------- soft Dice


def test_soft_dice_hand_computed_with_weights_and_classes_left_out():
    # Two pixels, 3 classes, weights (1, 1/2); sums over the batch. Pixel 0: p = (1/4, 3/4, 0), class 1;
    # pixel 1: p = (1/2, 0, 1/2), class 2.
    logits = torch.log(torch.tensor([[[[0.25, 0.5]], [[0.75, 0.0 + 1e-12]], [[1e-12, 0.5]]]])).requires_grad_()
    target = torch.tensor([[[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]]])
    weight = torch.tensor([[[1.0, 0.5]]])
    loss = SoftDiceLoss(eps=0.0, min_mass=0.1)(logits, target, weight)
    dice_1 = 2 * 0.75 / (0.75 + 1.0)  # class 1: only pixel 0 (weight 1)
    dice_2 = 2 * (0.5 * 0.5) / (0.5 * 0.5 + 0.5)  # class 2: only pixel 1 (weight 1/2)
    assert loss.item() == pytest.approx(1 - (dice_1 + dice_2) / 2, rel=1e-5)
    loss.backward()
    assert _all_finite_grads(logits)
    # A class with no target mass in the batch is left out instead of counting as Dice 0.
    no_class_2 = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 0.0]]]])
    only_1 = SoftDiceLoss(eps=0.0, min_mass=0.1)(logits.detach(), no_class_2, None)
    assert only_1.item() == pytest.approx(1 - 2 * 0.75 / (0.75 + 1.0), rel=1e-5)


def test_soft_dice_is_zero_for_a_perfect_answer_and_without_any_foreground():
    labels = torch.tensor([[[0, 1, 2, 2]]])
    perfect = 50.0 * F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    target = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert SoftDiceLoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    background_only = F.one_hot(torch.zeros_like(labels), 3).permute(0, 3, 1, 2).float()
    logits = torch.randn(1, 3, 1, 4, requires_grad=True)
    empty = SoftDiceLoss()(logits, background_only)
    assert empty.item() == 0.0
    empty.backward()  # still part of the graph

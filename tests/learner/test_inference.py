"""Volume prediction geometry and checkpoint round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.checkpoints import load_checkpoint, save_checkpoint
from learner.inference import predict_labels, predict_volume
from learner.networks import NetworkConfig, build_network

TINY = dict(channels=(4, 8, 16), deep_supervision=False)


def _model(num_classes=3, **overrides):
    torch.manual_seed(0)
    return build_network(NetworkConfig(num_classes=num_classes, **{**TINY, **overrides}))


def test_predict_volume_returns_original_geometry():
    model = _model(num_classes=3)
    image = np.random.default_rng(0).integers(0, 4000, (5, 37, 22)).astype(np.int16)  # non-square slices
    probabilities = predict_volume(model, image, size=32, batch_size=2, device="cpu")
    assert probabilities.shape == (3, 5, 37, 22) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    labels = predict_labels(model, image, size=32, device="cpu")
    assert labels.shape == (5, 37, 22) and labels.max() < 3


def test_predict_volume_batching_does_not_change_results_and_keeps_mode():
    model = _model()
    model.train()
    image = np.random.default_rng(1).random((7, 20, 28)).astype(np.float32)
    one = predict_volume(model, image, size=16, batch_size=1, device="cpu")
    many = predict_volume(model, image, size=16, batch_size=16, device="cpu")
    assert np.allclose(one, many, atol=1e-5)
    assert model.training  # restored


def test_predict_volume_resizes_back_each_slice():
    # A model that returns the image itself as class-1 evidence: the prediction must line up
    # with the input slice after the round trip through the training size.
    class Echo(torch.nn.Module):
        def forward(self, x):
            from learner.networks import SegmentationOutput

            return SegmentationOutput(logits=torch.cat([torch.zeros_like(x), 20 * (x - 0.5)], dim=1))

    image = np.zeros((2, 30, 50), dtype=np.float32)
    image[:, 5:20, 10:40] = 1.0
    probabilities = predict_volume(Echo(), image, size=64, device="cpu")
    foreground = probabilities[1] > 0.5
    assert foreground.shape == image.shape
    assert (foreground == (image > 0.5)).mean() > 0.98


def test_checkpoint_round_trip(tmp_path):
    config = NetworkConfig(num_classes=3, attention_after=(1,), attention_dim=8, **TINY)
    model = build_network(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    path = tmp_path / "models" / "best.pt"
    save_checkpoint(path, model, config, {"size": 32, "method": "attention", "val_mean_dice": 0.5})
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temporary file left
    loaded, loaded_config, metadata = load_checkpoint(path, device="cpu")
    assert loaded_config == config
    assert metadata == {"size": 32, "method": "attention", "val_mean_dice": 0.5}
    assert not loaded.training
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    assert torch.allclose(model(x).logits, loaded(x).logits, atol=1e-6)


def test_load_checkpoint_rejects_unknown_format(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"format": 99}, path)
    with pytest.raises(ValueError):
        load_checkpoint(path, device="cpu")

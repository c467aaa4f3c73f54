"""Tests of the UNet, its attention block and its configuration."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from learner.networks import NetworkConfig, SpatialSelfAttention, UNet2D, build_network


@pytest.mark.parametrize("bilinear", [False, True])
def test_output_shapes_on_non_square_input(bilinear):
    torch.manual_seed(0)
    config = NetworkConfig(in_channels=2, num_classes=3, bilinear=bilinear)
    model = build_network(config)
    out = model(torch.randn(2, 2, 48, 80))
    assert out.logits.shape == (2, 3, 48, 80)
    assert [tuple(a.shape) for a in out.aux_logits] == [
        (2, 3, 24, 40),
        (2, 3, 12, 20),
        (2, 3, 6, 10),
    ]
    assert out.features.shape == (2, 16, 48, 80)
    assert out.attention == []


def test_no_deep_supervision_and_other_channel_counts():
    model = build_network(
        NetworkConfig(channels=(8, 16, 32), num_classes=5, deep_supervision=False)
    )
    out = model(torch.randn(2, 1, 12, 20))  # multiple of 4 for three levels
    assert out.logits.shape == (2, 5, 12, 20) and out.aux_logits == []
    assert out.features.shape == (2, 8, 12, 20)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(2, 1, 14, 20))


@pytest.mark.parametrize(
    ("stages", "expected"),
    [((0,), [(16, 24)]), ((1,), [(8, 12)]), ((3,), [(2, 3)]), ((0, 2), [(16, 24), (4, 6)])],
)
def test_attention_after_any_encoder_stage(stages, expected):
    torch.manual_seed(1)
    model = build_network(NetworkConfig(attention_after=stages))
    out = model(torch.randn(2, 1, 32, 48))
    assert [(s.height, s.width) for s in out.attention] == expected
    for state, (h, w) in zip(out.attention, expected, strict=True):
        assert state.query.shape == (2, h * w, 64) and state.key.shape == (2, h * w, 64)
        assert state.scale.ndim == 0 and state.bias.ndim == 0 and state.scale.requires_grad
    assert out.logits.shape == (2, 4, 32, 48)


def test_attention_block_alters_the_prediction():
    torch.manual_seed(2)
    plain = build_network(NetworkConfig(channels=(4, 8, 16)))
    torch.manual_seed(2)
    attended = build_network(
        NetworkConfig(channels=(4, 8, 16), attention_after=(1,), attention_dim=8)
    )
    # Same convolution weights (drawn first), the block sits on the bottleneck only.
    attended.load_state_dict(plain.state_dict(), strict=False)
    plain.eval(), attended.eval()
    x = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(plain(x).logits, attended(x).logits)


def test_multi_head_attention_state_shapes():
    model = build_network(NetworkConfig(attention_after=(1,), attention_heads=4))
    out = model(torch.randn(2, 1, 32, 32))
    state = out.attention[0]
    assert state.query.shape == (2, 4, 64, 16) and state.key.shape == (2, 4, 64, 16)


def test_attention_block_matches_explicit_softmax_attention():
    """The block's output and its exposed query/key agree with a hand-written transformer block."""
    torch.manual_seed(3)
    block = SpatialSelfAttention(channels=6, dim=8, heads=1, mlp_ratio=2).eval()
    x = torch.randn(2, 6, 3, 5)
    out, state = block(x)
    tokens = block.proj_in(x).flatten(2).transpose(1, 2)
    q, k, v = block.to_qkv(block.norm_attention(tokens)).chunk(3, dim=-1)
    attention = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1)
    torch.testing.assert_close(
        state.query @ state.key.transpose(1, 2), q @ k.transpose(1, 2) / 8**0.5
    )
    tokens = tokens + block.proj(attention @ v)
    tokens = tokens + block.mlp(block.norm_mlp(tokens), 3, 5)
    expected = block.proj_out(block.norm_out(tokens).transpose(1, 2).reshape(2, 8, 3, 5))
    torch.testing.assert_close(out, expected)
    assert (state.height, state.width) == (3, 5)


def test_config_round_trip_through_json():
    config = NetworkConfig(
        in_channels=2,
        num_classes=3,
        channels=(8, 16, 32, 64),
        attention_after=(2, 0),
        attention_heads=2,
        deep_supervision=False,
        bilinear=True,
        dropout=(0.0, 0.1, 0.2, 0.3),
    )
    restored = NetworkConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.attention_after == (0, 2) and isinstance(restored.channels, tuple)
    torch.manual_seed(4)
    a = build_network(config).eval()
    b = build_network(restored).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 2, 16, 16)
    torch.testing.assert_close(a(x).logits, b(x).logits)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attention_after": (4,)},  # five levels have encoder stages 0..3
        {"attention_after": (-1,)},
        {"channels": (16,)},
        {"attention_dim": 64, "attention_heads": 3},
        {"dropout": (0.1, 0.2)},
    ],
)
def test_invalid_configs_are_rejected(kwargs):
    with pytest.raises(ValueError):
        NetworkConfig(**kwargs)


def test_from_dict_rejects_unknown_keys_and_fills_defaults():
    with pytest.raises(ValueError, match="unknown"):
        NetworkConfig.from_dict({"channels": [8, 16], "depth": 3})
    assert NetworkConfig.from_dict({"num_classes": 2}) == NetworkConfig(num_classes=2)


def test_default_layout_is_the_wsl4mis_unet():
    model = UNet2D(NetworkConfig())
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.05, 0.1, 0.2, 0.3, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert model.input_block[0].out_channels == 16
    assert [block[1][0].out_channels for block in model.down] == [32, 64, 128, 256]


def test_training_step_reduces_a_scribble_loss():
    """The whole network learns: a few Adam steps on a fixed batch lower the cross-entropy."""
    torch.manual_seed(5)
    model = build_network(
        NetworkConfig(channels=(8, 16, 32), num_classes=2, attention_after=(0,), attention_dim=16)
    )
    x = torch.randn(4, 1, 16, 16)
    target = (x[:, 0] > 0).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out.logits, target) + sum(
            F.cross_entropy(
                aux, F.interpolate(target[:, None].float(), size=aux.shape[-2:]).long()[:, 0]
            )
            for aux in out.aux_logits
        )
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

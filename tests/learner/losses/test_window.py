"""Tests of the window-pair helpers and the chunked row log-normaliser used by the losses."""

from __future__ import annotations

import pytest
import torch

from learner.losses.attentive import resize_probs, row_logsumexp
from learner.losses.window import (
    half_window_offsets,
    pair_count,
    pair_validity,
    window_pair_dot,
    window_pair_dot_tiled,
)


def test_half_window_covers_each_unordered_pair_once():
    offsets = half_window_offsets(5)
    assert len(offsets) == 60
    full = set(offsets) | {(-dy, -dx) for dy, dx in offsets}
    assert len(full) == 120 and (0, 0) not in full
    assert all(max(abs(dy), abs(dx)) <= 5 for dy, dx in full)


def _brute_force_pair_dot(x, y, offsets):
    batch, _, height, width = x.shape
    out = torch.zeros(batch, len(offsets), height, width, dtype=x.dtype)
    for o, (dy, dx) in enumerate(offsets):
        for row in range(height):
            for col in range(width):
                if 0 <= row + dy < height and 0 <= col + dx < width:
                    out[:, o, row, col] = (x[:, :, row, col] * y[:, :, row + dy, col + dx]).sum(1)
    return out


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 9, 4)])
def test_window_pair_dot_variants_match_brute_force(shape):
    torch.manual_seed(0)
    offsets = half_window_offsets(3)
    x = torch.randn(shape, dtype=torch.double)
    y = torch.randn(shape, dtype=torch.double)
    expected = _brute_force_pair_dot(x, y, offsets)
    torch.testing.assert_close(window_pair_dot(x, y, offsets), expected)
    torch.testing.assert_close(window_pair_dot_tiled(x, y, offsets, tile=4), expected)
    valid = pair_validity(shape[2], shape[3], offsets)
    assert int(valid.sum()) == sum(pair_count(shape[2], shape[3], dy, dx) for dy, dx in offsets)
    assert bool((expected[:, ~valid] == 0).all())


def test_window_pair_dot_gradients():
    torch.manual_seed(1)
    offsets = half_window_offsets(2)
    x = torch.randn(1, 2, 4, 5, dtype=torch.double, requires_grad=True)
    y = torch.randn(1, 2, 4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: window_pair_dot(a, b, offsets), (x, y), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda a, b: window_pair_dot_tiled(a, b, offsets, tile=3), (x, y), fast_mode=True
    )


def test_row_logsumexp_in_chunks_matches_dense_and_its_gradient():
    torch.manual_seed(2)
    query = (3 * torch.randn(2, 23, 5, dtype=torch.double)).requires_grad_()
    key = (3 * torch.randn(2, 17, 5, dtype=torch.double)).requires_grad_()
    dense = torch.logsumexp(query @ key.transpose(1, 2), dim=-1)
    torch.testing.assert_close(row_logsumexp(query, key, chunk=4), dense)
    assert torch.autograd.gradcheck(lambda q, k: row_logsumexp(q, k, chunk=4), (query, key))
    # one chunk: the forward's softmax is kept for backward (a repeated backward recomputes it,
    # equal up to rounding, hence the tolerance for gradcheck's repeatability check)
    torch.testing.assert_close(row_logsumexp(query, key), dense)
    assert torch.autograd.gradcheck(lambda q, k: row_logsumexp(q, k), (query, key), nondet_tol=1e-12)
    with pytest.raises(RuntimeError):  # second derivatives are refused, not silently wrong
        grad_q, = torch.autograd.grad(row_logsumexp(query, key).sum(), query, create_graph=True)
        grad_q.sum().backward()


def test_resize_probs_keeps_probabilities():
    probs = torch.randn(2, 3, 16, 12).softmax(1)
    for size in [(8, 6), (5, 7), (32, 24)]:
        resized = resize_probs(probs, *size)
        assert resized.shape == (2, 3, *size)
        torch.testing.assert_close(resized.sum(1), torch.ones(2, *size))

"""ReinMax and STE: hard forward values, and gradients against hand-derived formulas."""

import numpy as np
import pytest
import torch

from hadskip.modeling.reinmax import reinmax, straight_through


@pytest.mark.parametrize("fn", [reinmax, straight_through])
def test_forward_is_hard_one_hot(fn):
    logits = torch.randn(200, 2, requires_grad=True)
    d = fn(logits, 1.0, torch.Generator().manual_seed(0))
    assert set(d.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(d.detach().sum(-1), torch.ones(200))


def test_samples_follow_softmax():
    logits = torch.tensor([[0.0, 1.0]]).repeat(20000, 1)
    d = reinmax(logits, 1.0, torch.Generator().manual_seed(1))
    p_open = 1 / (1 + np.exp(-1.0))
    assert abs(d[:, 1].mean().item() - p_open) < 0.015


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _jac(p):
    return np.diag(p) - np.outer(p, p)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_reinmax_gradient_hand_computed(tau):
    # theta = (0.3, -0.2), fixed sample D = (0, 1), loss = w . D with w = (1.5, -2.0)
    theta = np.array([0.3, -0.2])
    d = np.array([0.0, 1.0])
    w = np.array([1.5, -2.0])
    pi0 = _softmax(theta)
    pi1 = (d + _softmax(theta / tau)) / 2  # softmax(stop_grad(ln pi1 - theta) + theta) has this value
    # d(pi2)/d(theta) = 2 * J(pi1) - 0.5 * J(pi0), J(p) = diag(p) - p p^T (softmax Jacobian)
    expected = (2 * _jac(pi1) - 0.5 * _jac(pi0)) @ w
    t = torch.tensor(theta, requires_grad=True)
    out = reinmax(t[None], tau, sample=torch.tensor(d)[None])
    assert torch.equal(out.detach()[0], torch.tensor(d))
    (out[0] * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), expected, rtol=1e-10, atol=1e-12)
    # and it is not the straight-through gradient
    ste = _jac(_softmax(theta / tau)) @ w / tau
    assert not np.allclose(expected, ste)


def test_ste_gradient_hand_computed():
    theta = np.array([1.0, -0.5])
    w = np.array([0.7, 0.2])
    t = torch.tensor(theta, requires_grad=True)
    out = straight_through(t[None], 1.0, sample=torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    (out[0] * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), _jac(_softmax(theta)) @ w, rtol=1e-10)

"""Discrete gate samplers with gradients: ReinMax (Liu et al., 2023) and the straight-through estimator.

ReinMax follows Algorithm 1 of "Bridging Discrete and Backpropagation: Straight-Through and Beyond"
(reference implementation: github.com/microsoft/ReinMax). The forward value is the hard one-hot sample D;
the backward pass is the second-order (Heun's method) estimate 2*dpi_1 - 0.5*dpi_0, where
pi_1 = softmax(stop_grad(ln((D + softmax(theta/tau)) / 2) - theta) + theta).
Not included: the Gumbel-softmax family (the paper shows ReinMax dominates it for this use). The inference
rule, which samples nothing, is hadskip.modeling.encoder.gate_open.
"""

from __future__ import annotations

import torch


def _one_hot_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A one-hot sample from the categorical `probs` over the last axis.  # (..., C) -> (..., C)"""
    flat = probs.reshape(-1, probs.shape[-1])
    idx = torch.multinomial(flat, num_samples=1, replacement=True, generator=generator)  # (N, 1)
    return torch.zeros_like(flat).scatter_(-1, idx, 1.0).reshape(probs.shape)


def reinmax(logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
            sample: torch.Tensor | None = None) -> torch.Tensor:
    """Hard one-hot sample of softmax(logits) whose gradient is the ReinMax estimate.

    `sample` fixes D (for tests); otherwise it is drawn from softmax(logits).
    """
    pi0 = logits.softmax(dim=-1)
    d = _one_hot_sample(pi0.detach(), generator) if sample is None else sample.to(pi0.dtype)
    pi1 = (d + (logits / tau).softmax(dim=-1)) / 2
    pi1 = ((torch.log(pi1) - logits).detach() + logits).softmax(dim=-1)
    pi2 = 2 * pi1 - 0.5 * pi0
    return pi2 - pi2.detach() + d


def straight_through(logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
                     sample: torch.Tensor | None = None) -> torch.Tensor:
    """Hard one-hot sample whose gradient is that of softmax(logits / tau) (the STE baseline)."""
    pi = (logits / tau).softmax(dim=-1)
    d = _one_hot_sample(logits.softmax(dim=-1).detach(), generator) if sample is None else sample.to(pi.dtype)
    return pi - pi.detach() + d


ESTIMATORS = {"reinmax": reinmax, "ste": straight_through}

"""The negative ELBO's parts: closed-form KL, likelihoods, β and KL warm-up."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from vae_service.model import VAEConfig
from vae_service.model.loss import (
    elbo_terms,
    free_bits_penalty,
    gaussian_kl,
    kl_weight,
    reconstruction_nll,
)

BERNOULLI = VAEConfig(latent_dim=2, widths=(4,), hidden_dim=4)
GAUSSIAN = VAEConfig(latent_dim=2, widths=(4,), hidden_dim=4, likelihood="gaussian")


def test_closed_form_kl_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([[0.5, -1.0, 2.0]])
    logvar = torch.tensor([[-1.0, 0.3, 0.0]])
    q = Normal(mean, torch.exp(0.5 * logvar))
    z = mean + torch.exp(0.5 * logvar) * torch.randn((200_000, 3), generator=gen)
    mc = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(dim=1)
    stderr = mc.std() / math.sqrt(len(mc))
    assert abs(mc.mean() - gaussian_kl(mean, logvar)[0]) < 4 * stderr


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    assert torch.allclose(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))
    assert (gaussian_kl(torch.randn(4, 5), torch.randn(4, 5)) > 0).all()


def test_bernoulli_nll_matches_the_formula():
    x = torch.rand(3, 1, 4, 4).round()
    logits = torch.randn(3, 1, 4, 4)
    p = torch.sigmoid(logits)
    manual = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(reconstruction_nll(logits, x, BERNOULLI), manual, atol=1e-4)


def test_bernoulli_nll_extremes():
    x = torch.rand(2, 1, 4, 4).round()
    # A coin flip per pixel costs log 2; a confident right guess almost nothing.
    assert torch.allclose(reconstruction_nll(torch.zeros_like(x), x, BERNOULLI),
                          torch.full((2,), 16 * math.log(2)))  # fmt: skip
    assert (reconstruction_nll((2 * x - 1) * 30, x, BERNOULLI) < 1e-6).all()


def test_gaussian_nll_matches_the_density():
    x = torch.rand(2, 1, 4, 4)
    logits = torch.randn(2, 1, 4, 4)
    dist = Normal(torch.sigmoid(logits), GAUSSIAN.gaussian_std)
    expected = -dist.log_prob(x).flatten(1).sum(1)
    assert torch.allclose(reconstruction_nll(logits, x, GAUSSIAN), expected, atol=1e-4)


def test_gaussian_nll_minimum_at_the_mean():
    x = torch.rand(1, 1, 4, 4) * 0.8 + 0.1
    exact = torch.logit(x)
    best = 16 * (math.log(GAUSSIAN.gaussian_std) + 0.5 * math.log(2 * math.pi))
    assert reconstruction_nll(exact, x, GAUSSIAN).item() == pytest.approx(best, abs=1e-3)
    assert reconstruction_nll(exact + 0.5, x, GAUSSIAN).item() > best


@pytest.mark.parametrize(
    ("step", "beta", "warmup", "expected"),
    [(0, 1.0, 100, 0.0), (50, 1.0, 100, 0.5), (100, 1.0, 100, 1.0), (500, 1.0, 100, 1.0),
     (25, 4.0, 100, 1.0), (0, 0.5, 0, 0.5), (7, 2.0, -1, 2.0)],
)  # fmt: skip
def test_kl_weight_warms_up_linearly_to_beta(step: int, beta: float, warmup: int, expected: float):
    assert kl_weight(step, beta, warmup) == pytest.approx(expected)


def test_elbo_terms_apply_the_kl_scale_to_the_loss_only():
    x = torch.rand(4, 1, 4, 4).round()
    logits, mean, logvar = torch.randn(4, 1, 4, 4), torch.randn(4, 2), torch.randn(4, 2)
    terms = elbo_terms(logits, x, mean, logvar, BERNOULLI, kl_scale=0.25)
    assert terms.neg_elbo.item() == pytest.approx((terms.recon + terms.kl).item(), rel=1e-6)
    assert terms.loss.item() == pytest.approx((terms.recon + 0.25 * terms.kl).item(), rel=1e-6)
    assert terms.recon.item() == pytest.approx(reconstruction_nll(logits, x, BERNOULLI).mean())


def test_free_bits_leave_units_below_the_floor_unpulled():
    # Unit 0 carries 2 nats on average, unit 1 about 0.005: below a 0.1-nat floor.
    mean = torch.tensor([[2.0, 0.1], [-2.0, -0.1]], requires_grad=True)
    logvar = torch.zeros(2, 2, requires_grad=True)
    penalty = free_bits_penalty(mean, logvar, free_bits=0.1)
    assert penalty.item() == pytest.approx(2.0 + 0.1)
    penalty.backward()
    assert mean.grad is not None and logvar.grad is not None
    assert mean.grad[:, 1].abs().sum() == 0 and logvar.grad[:, 1].abs().sum() == 0
    assert mean.grad[:, 0].abs().sum() > 0


def test_free_bits_change_the_loss_never_the_bound():
    x = torch.rand(4, 1, 4, 4).round()
    logits, mean, logvar = torch.randn(4, 1, 4, 4), torch.randn(4, 2) * 0.01, torch.zeros(4, 2)
    plain = elbo_terms(logits, x, mean, logvar, BERNOULLI)
    floored = elbo_terms(logits, x, mean, logvar, BERNOULLI, free_bits=0.5)
    assert floored.neg_elbo.item() == plain.neg_elbo.item()
    assert floored.loss.item() == pytest.approx(plain.recon.item() + 2 * 0.5)

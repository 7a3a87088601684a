"""Diffusion objectives: oracle models give 0, zero models give the closed form on the same draws."""
import math

import pytest
import torch

from interplay.models.training import objectives as O


def _x0(seed=0, shape=(3, 2, 4, 5, 5)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _alphas(T=1000):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def test_v_prediction_oracle_is_zero_and_both_weightings_agree():
    x0, ac = _x0(), _alphas()

    def oracle(x_t, t):  # v from x_t given the true x0
        a = ac[t.cpu()].float().view(-1, 1, 1, 1, 1)
        n = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * n - (1 - a).sqrt() * x0
    assert float(O.v_prediction_loss(oracle, x0, ac, torch.Generator().manual_seed(1))) < 1e-9
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    lc = O.v_prediction_loss(zero, x0, ac, torch.Generator().manual_seed(1), weighting="cogvideox")
    lv = O.v_prediction_loss(zero, x0, ac, torch.Generator().manual_seed(1), weighting="v")
    assert float(lc) == pytest.approx(float(lv), rel=1e-5)
    # the same draws by hand: timesteps first, then noise; zero model -> mean v^2
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (3,), generator=g)
    n = torch.randn(x0.shape, generator=g)
    a = ac[t].float().view(-1, 1, 1, 1, 1)
    v = a.sqrt() * n - (1 - a).sqrt() * x0
    assert float(lv) == pytest.approx(float((v ** 2).flatten(1).mean(1).mean()), rel=1e-6)


def test_v_prediction_hand_number():
    # a = 0.36: sqrt(a) = 0.6, sqrt(1-a) = 0.8; x0 = 1, noise = 0.5 -> v = 0.3 - 0.8 = -0.5 -> zero model 0.25
    x0 = torch.ones(1, 4)
    ac = torch.tensor([0.36], dtype=torch.float64)
    loss, info = O.v_prediction_loss(lambda x, t: torch.zeros_like(x), x0, ac, torch.Generator(),
                                     timesteps=torch.tensor([0]), noise=torch.full((1, 4), 0.5), return_info=True)
    assert float(loss) == pytest.approx(0.25, rel=1e-6)
    assert torch.allclose(info["x_t"], torch.full((1, 4), 0.6 + 0.4))


def test_edm_oracle_zero_hand_number_and_matches_sampler_preconditioning():
    x0 = _x0(2)

    def oracle(x_in, c_noise):  # F with D(x) = x0 exactly
        s = (4 * c_noise).exp().view(-1, 1, 1, 1, 1)
        c_skip, c_out, c_in, _ = O.edm_precondition(s.flatten())
        x = x_in / c_in.view(-1, 1, 1, 1, 1)
        return (x0 - c_skip.view(-1, 1, 1, 1, 1) * x) / c_out.view(-1, 1, 1, 1, 1)
    assert float(O.edm_loss(oracle, x0, torch.Generator().manual_seed(0))) < 1e-8
    # sigma = 1, sd = 1: c_skip 1/2, D = (x0 + n)/2, lambda 2 -> loss = 0.5 mean((n - x0)^2)
    x0 = torch.tensor([[1.0, -1.0]])
    n = torch.tensor([[0.5, 0.5]])
    loss = O.edm_loss(lambda x, c: torch.zeros_like(x), x0, torch.Generator(), sigmas=torch.tensor([1.0]), noise=n)
    assert float(loss) == pytest.approx(0.5 * (0.25 + 2.25) / 2, rel=1e-6)
    from interplay.models.sampling import edm
    s = torch.tensor([0.1, 1.0, 30.0])
    ref = edm.precondition(s)
    for a, b in zip(O.edm_precondition(s), ref):
        torch.testing.assert_close(a, b.float())
    torch.testing.assert_close(O.edm_weight(s), edm.loss_weight(s).float())


def test_edm_sigma_statistics_and_prediction_sign():
    s = O.sample_edm_sigmas(100_000, torch.Generator().manual_seed(0))
    assert float(s.log().mean()) == pytest.approx(0.7, abs=0.02) and float(s.log().std()) == pytest.approx(1.6, abs=0.02)
    cv = O.edm_precondition(torch.tensor([2.0]), prediction="v")[1]
    ce = O.edm_precondition(torch.tensor([2.0]), prediction="edm")[1]
    assert float(cv) == pytest.approx(-2 / math.sqrt(5)) and float(ce) == pytest.approx(2 / math.sqrt(5))


def test_flow_matching_oracle_zero_shift_and_hand_number():
    x0 = _x0(3)

    def oracle(x_t, t):
        s = (t / 1000).view(-1, 1, 1, 1, 1)
        n = (x_t - (1 - s) * x0) / s
        return n - x0
    assert float(O.flow_matching_loss(oracle, x0, torch.Generator().manual_seed(0))) < 1e-8
    # shift 5 maps 0.5 -> 2.5 / 3; shift 1 is the identity
    assert float(O.shift_sigma(torch.tensor(0.5), 5.0)) == pytest.approx(2.5 / 3)
    assert float(O.shift_sigma(torch.tensor(0.3), 1.0)) == pytest.approx(0.3)
    # zero model: mean (n - x0)^2 on the draws (s first, then noise)
    g = torch.Generator().manual_seed(4)
    got = O.flow_matching_loss(lambda x, t: torch.zeros_like(x), x0, torch.Generator().manual_seed(4))
    torch.rand(3, generator=g)
    n = torch.randn(x0.shape, generator=g)
    assert float(got) == pytest.approx(float(((n - x0) ** 2).mean()), rel=1e-6)
    seen = {}
    O.flow_matching_loss(lambda x, t: seen.setdefault("t", t) * 0 + x * 0, torch.zeros(1, 2), torch.Generator(),
                         sigmas=torch.tensor([0.25]))
    assert float(seen["t"]) == 250.0


def test_named_errors():
    with pytest.raises(ValueError, match="weighting must be"):
        O.v_prediction_loss(None, torch.zeros(1, 1), _alphas(10), torch.Generator(), weighting="snr")
    with pytest.raises(ValueError, match="sampling must be"):
        O.flow_matching_loss(None, torch.zeros(1, 1), torch.Generator(), sampling="beta")

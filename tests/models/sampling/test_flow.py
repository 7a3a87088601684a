"""The Wan family's flow-matching schedule, the two-expert switch and per-token timesteps."""
import pytest
import torch

from interplay.models.sampling import flow


def test_shifted_sigmas_by_hand():
    """steps 2, shift 5: linspace(1, 1/1000, 3)[:-1] = [1, 0.5005]; 5 s / (1 + 4 s) = [1, 2.5025 / 3.002];
    UniPC nudges the first to 1 - 1e-6 and stores int(1000 s): [999, 833]; a final sigma 0."""
    s = flow.flow_sigmas(2, 5.0, "unipc")
    torch.testing.assert_close(s, torch.tensor([1 - 1e-6, 2.5025 / 3.002, 0.0]), rtol=0, atol=1e-7)
    sch = flow.make_scheduler("unipc", shift=5.0, steps=2)
    assert sch.timesteps.tolist() == [999, 833]
    torch.testing.assert_close(sch.sigmas, s, rtol=0, atol=0)
    # Euler: linspace(1, shift(1/1000), N) shifted (the end point twice), float timesteps
    e = flow.make_scheduler("euler", shift=5.0, steps=2)
    lo = 5 * 0.001 / (1 + 4 * 0.001)
    torch.testing.assert_close(e.sigmas, torch.tensor([1.0, 5 * lo / (1 + 4 * lo), 0.0]), rtol=0, atol=1e-7)
    torch.testing.assert_close(e.timesteps, e.sigmas[:-1] * 1000, rtol=0, atol=1e-4)
    assert float(flow.shift_sigma(torch.tensor(0.5), 5.0)) == pytest.approx(2.5 / 3)


@pytest.mark.parametrize("name", flow.SCHEDULERS)
@pytest.mark.parametrize("steps,shift", [(40, 5.0), (50, 3.0), (8, 12.0)])
def test_our_sigmas_are_the_diffusers_schedulers(name, steps, shift):
    sch = flow.make_scheduler(name, shift=shift, steps=steps)
    torch.testing.assert_close(sch.sigmas.float(), flow.flow_sigmas(steps, shift, name), rtol=0, atol=1e-6)
    assert len(sch.timesteps) == steps and bool((sch.timesteps[1:] < sch.timesteps[:-1]).all())


def test_scheduler_is_configured_as_the_wan_pipelines():
    cfg = dict(flow_shift=3.0, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True)
    sch = flow.make_scheduler("unipc", shift=5.0, config=cfg)
    c = sch.config
    assert (c.prediction_type, c.use_flow_sigmas, c.flow_shift, c.solver_type) == ("flow_prediction", True, 5.0, "bh2")
    with pytest.raises(ValueError, match="scheduler must be one of"):
        flow.make_scheduler("ddim")


def test_two_expert_switch_happens_at_the_boundary_and_nowhere_else():
    # Wan2.2 I2V-A14B: 40 UniPC steps, shift 5, boundary 0.9 -> 900
    ts = flow.make_scheduler("unipc", shift=5.0, steps=40).timesteps
    plan = flow.expert_plan(ts, 0.9)
    k = flow.switch_step(ts, 0.9)
    assert ts[k - 1] >= 900 > ts[k]  # the schedule straddles the boundary at k
    assert plan == ["high_noise"] * k + ["low_noise"] * (40 - k)  # one switch, never back
    # by hand: the UniPC timesteps are int(1000 shift(s)), s = linspace(1, 1/1000, 41)[:-1]; 900 falls at
    # 5 s / (1 + 4 s) = 0.9 -> s = 0.6429, i.e. after step (1 - 0.6429) / (0.999 / 40) = 14.3 -> k = 15
    assert k == 15
    # a timestep exactly at the boundary still belongs to the high-noise expert (t >= boundary x 1000)
    assert flow.expert_plan([950, 900, 899.9, 10], 0.9) == ["high_noise", "high_noise", "low_noise", "low_noise"]
    assert flow.expert_for_timestep(torch.tensor(900), 0.9) == "high_noise"
    assert flow.expert_plan(ts, None) == ["high_noise"] * 40 and flow.switch_step(ts, None) is None
    # Wan2.2 T2V-A14B's boundary 0.875 with shift 12 on 40 Euler steps
    e = flow.make_scheduler("euler", shift=12.0, steps=40).timesteps
    k = flow.switch_step(e, 0.875)
    assert e[k - 1] >= 875 > e[k] and flow.expert_plan(e, 0.875).count("high_noise") == k


def test_per_token_timesteps():
    mask = torch.tensor([[0.0, 0, 0, 0, 1, 1, 1, 1]])  # 2 latent frames x 2 x 2 tokens; frame 0 is the image
    t = flow.token_timesteps(torch.tensor(833), mask, batch=2)
    assert t.shape == (2, 8) and t.dtype == torch.float32
    assert t[1].tolist() == [0, 0, 0, 0, 833, 833, 833, 833]

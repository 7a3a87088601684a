"""The step cache: its skip decisions on hand-computed numbers, off = every sampler's old output bitwise, on = fewer
model calls close to the uncached latents, and a change of expert / rows / active controls always recomputed."""
import pytest
import torch

from interplay.models.backbones import cogvideox as cog
from interplay.models.backbones import svd as svdb
from interplay.models.backbones import wan
from interplay.models.sampling import cogvideox as SC
from interplay.models.sampling import edm as SE
from interplay.models.sampling import wan as SW
from interplay.models.sampling.step_cache import StepCache, active_key


def test_decisions_follow_the_transformation_rate_by_hand():
    """x_i = i, out_i = 10 + i (so k = |dout| / |dx| = 1). 10 steps, warmup 0.2 (steps 0, 1), tail 1 (step 9).
    Step 2: 1 * |2 - 1| / |11| = 0.0909 < 0.2: skip (reuse out_1). Step 3: 0.0909 + 1/11 = 0.1818: skip.
    Step 4: 0.2727 >= 0.2: compute (out 14), rate |14 - 11| / |4 - 1| = 1. Steps 5, 6: 1/14, 2/14 = 0.1429: skip.
    Step 7: 3/14 = 0.214: compute. Step 8: 1/17: skip. Step 9: the tail, computed."""
    cache = StepCache(threshold=0.2, warmup=0.2, tail=1, max_skips=3).start(10)
    calls, outs = [], []
    for i in range(10):
        x = torch.full((2,), float(i))
        outs.append(float(cache(i, x, lambda i=i: calls.append(i) or torch.full((2,), 10.0 + i))[0]))
    assert calls == [0, 1, 4, 7, 9]
    assert outs == [10, 11, 11, 11, 14, 14, 14, 17, 17, 19]
    assert (cache.computed, cache.skipped) == (5, 5)
    # at most max_skips in a row, whatever the threshold
    cache = StepCache(threshold=100.0, warmup=0.2, tail=1, max_skips=2).start(10)
    calls = []
    for i in range(10):
        cache(i, torch.full((2,), float(i)), lambda i=i: calls.append(i) or torch.full((2,), 10.0 + i))
    assert calls == [0, 1, 4, 7, 9]
    # a new key (another expert, other rows, a control switching on) is computed, and its rate measured afresh
    cache = StepCache(threshold=100.0, warmup=0.0, tail=0, max_skips=5).start(8)
    calls = []
    for i in range(8):
        key = "a" if i < 4 else "b"
        cache(i, torch.full((2,), float(i)), lambda i=i: calls.append(i) or torch.full((2,), 10.0 + i), key=key)
    assert calls == [0, 1, 4, 5]


def test_settings_are_checked_and_active_key():
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        StepCache(threshold=-1)
    with pytest.raises(ValueError, match="warmup must be a fraction"):
        StepCache(warmup=2)
    with pytest.raises(RuntimeError, match="start"):
        StepCache(threshold=0.2)(0, torch.zeros(1), lambda: torch.zeros(1))

    class Ranged:
        def active(self, step):
            return step[0] >= 2

    assert [active_key([Ranged(), object()], i, 4) for i in (1, 2)] == [(False, True), (True, True)]


@pytest.fixture(scope="module")
def cogbb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


def _cog(bb, cache):
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    pos, neg = cog.encode_prompt(bb, ["a red cube slides right"]), cog.encode_prompt(bb, [""])
    return SC.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=12, cfg=6.0, seed=3, step_cache=cache)


def test_off_is_the_old_output_bitwise_and_on_calls_the_model_less(cogbb):
    old = _cog(cogbb, None)
    off = StepCache(threshold=0.0)
    assert torch.equal(_cog(cogbb, off), old) and off.computed == 12
    on = StepCache(threshold=0.2)
    got = _cog(cogbb, on)
    assert on.skipped > 0 and on.computed + on.skipped == 12 and on.computed >= 4  # warmup 3 + the tail
    assert float((got - old).abs().mean()) < 0.1 * float(old.abs().mean())


def test_svd_and_wan_off_bitwise_on_fewer_calls(tiny_svd, tiny_wan):
    sb = svdb.load_svd(tiny_svd, dtype=torch.float32, device="cpu")
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    kw = dict(num_frames=4, steps=10, seed=2)
    ref = SE.sample_svd(sb, img, **kw)
    assert torch.equal(SE.sample_svd(sb, img, step_cache=StepCache(threshold=0.0), **kw), ref)
    on = StepCache(threshold=0.5)
    SE.sample_svd(sb, img, step_cache=on, **kw)
    assert on.skipped > 0

    wb = wan.load_wan(tiny_wan, dtype="fp32", device="cpu")
    pos, neg = wan.encode_prompt(wb, ["a red box"]), wan.encode_prompt(wb, [""])
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    kw = dict(num_frames=5, steps=10, cfg=3.5, seed=1)
    ref = SW.sample_wan(wb, image, pos, neg, **kw)
    assert torch.equal(SW.sample_wan(wb, image, pos, neg, step_cache=StepCache(threshold=0.0), **kw), ref)
    on = StepCache(threshold=0.5)
    calls = []

    from interplay.models.backbones.base import Attachment

    class Experts(Attachment):
        def begin(self, ctx):
            calls.append((ctx.extra["step"][0], ctx.extra["expert"]))

    SW.sample_wan(wb, image, pos, neg, step_cache=on, attachments=[Experts()], **kw)
    assert on.skipped > 0
    steps = [s for s, _ in calls]
    switch = next(s for s, e in calls if e == "low_noise")
    assert {switch, switch + 1} <= set(steps)  # the switch step and the next (a fresh rate) run the model

"""Augmentation: each transform does what it says, exactly where it can, and draws only from the given generator."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from har_vit.core.errors import UsageError
from har_vit.training.augment import (
    AugmentConfig,
    Augmenter,
    random_rotations,
    resample,
    rodrigues,
    sample_beta,
    soft_cross_entropy,
    warp_positions,
)

K = 6
FULL = dict(jitter=0.05, scale=0.1, rotate=45, time_warp=0.2, mixup=0.4, cutmix=1.0, erase=0.1)
NORM = {"mean": [0.4, 8.9, 1.2], "std": [6.1, 6.8, 3.9]}  # roughly WISDM's, in m/s^2: gravity mostly on y


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches here are tiny: a second intra-op thread only adds contention on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(B: int = 64, T: int = 32, C: int = 3, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(B, T, C, generator=g, dtype=dtype), torch.randint(0, K, (B,), generator=g)


def run(x, y, num_classes=K, channels=None, norm=None, seed=0, **cfg):
    aug = Augmenter(AugmentConfig.off(**cfg), num_classes, channels=channels or x.shape[-1], norm=norm)
    return aug(x, y, gen(seed))


# --- the contract ----------------------------------------------------------------------------------

SINGLE = [dict(jitter=0.1), dict(scale=0.1), dict(rotate=90), dict(time_warp=0.3), dict(mixup=0.4),
          dict(cutmix=1.0), dict(erase=0.3), FULL, dict(FULL, aug_p=0.5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cfg", SINGLE, ids=lambda c: "+".join(c))
def test_shapes_and_dtypes(cfg, dtype):
    x, y = batch(dtype=dtype)
    xo, t = run(x, y, norm=NORM, **cfg)
    assert xo.shape == x.shape and xo.dtype == dtype and xo.device == x.device
    assert torch.isfinite(xo.float()).all()
    assert not torch.equal(xo, x)
    if "mixup" in cfg or "cutmix" in cfg:
        assert t.shape == (64, K) and t.dtype == torch.float32
        torch.testing.assert_close(t.sum(1), torch.ones(64))
    else:
        assert t is y


@pytest.mark.parametrize("cfg", [{}, dict(FULL, aug_p=0.0)], ids=["defaults", "aug_p=0"])
def test_all_off_is_the_identity(cfg):
    x, y = batch()
    c = AugmentConfig.off(**cfg)
    assert not c.enabled() and not c.mixing
    g = gen()
    state = g.get_state()
    xo, t = Augmenter(c, K)(x, y, g)
    assert xo is x and t is y
    assert torch.equal(g.get_state(), state)  # nothing drawn


def test_seeded_reproducible_and_resumable():
    x, y = batch()
    a, ta = run(x, y, seed=3, **FULL)
    b, tb = run(x, y, seed=3, **FULL)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    c, _ = run(x, y, seed=4, **FULL)
    assert not torch.equal(a, c)
    # Resuming from a saved generator state replays the same batches: nothing else is drawn from.
    aug, g = Augmenter(AugmentConfig.off(**FULL), K), gen(5)
    aug(x, y, g)
    state = g.get_state()
    torch.manual_seed(123)
    second = aug(x, y, g)
    torch.manual_seed(456)  # the global RNG must not matter
    g.set_state(state)
    again = aug(x, y, g)
    assert torch.equal(second[0], again[0]) and torch.equal(second[1], again[1])


def test_p_picks_windows_independently_per_transform():
    x, y = batch(B=4000, T=8)
    for cfg in (dict(jitter=0.1), dict(scale=0.1), dict(rotate=60), dict(time_warp=0.5), dict(erase=1.0)):
        xo, _ = run(x, y, aug_p=0.3, **cfg)
        changed = (xo != x).flatten(1).any(1).float().mean().item()
        assert changed == pytest.approx(0.3, abs=0.03), cfg
    # Two transforms at p = 0.5: independent picks leave ~1/4 untouched (one shared pick would leave 1/2).
    xo, _ = run(x, y, aug_p=0.5, jitter=0.1, erase=1.0)
    untouched = (xo == x).flatten(1).all(1).float().mean().item()
    assert untouched == pytest.approx(0.25, abs=0.03)


# --- per-window transforms -------------------------------------------------------------------------


def test_jitter_statistics():
    x = torch.zeros(1024, 128, 3)
    xo, _ = run(x, torch.zeros(1024, dtype=torch.long), jitter=0.2)
    assert xo.std().item() == pytest.approx(0.2, rel=0.02)
    assert abs(xo.mean().item()) < 0.002
    # White: neighbouring steps uncorrelated.
    assert abs(torch.corrcoef(torch.stack([xo[:, 1:].flatten(), xo[:, :-1].flatten()]))[0, 1].item()) < 0.01


def test_scale_is_one_gain_per_window_and_axis():
    x = torch.ones(2048, 16, 3)
    xo, _ = run(x, torch.zeros(2048, dtype=torch.long), scale=0.1)
    gain = xo[:, 0, :]  # (B, C)
    assert torch.equal(xo, gain.unsqueeze(1).expand_as(xo))  # constant over time, no axis mixing
    assert gain.mean().item() == pytest.approx(1.0, abs=0.005)
    assert gain.std().item() == pytest.approx(0.1, rel=0.05)
    assert abs(torch.corrcoef(gain.T)[0, 1].item()) < 0.1  # axes drawn independently


def test_rodrigues_equals_matrix_exponential():
    axis = F.normalize(torch.randn(50, 3, generator=gen(), dtype=torch.float64), dim=1)
    angle = torch.rand(50, generator=gen(1), dtype=torch.float64) * math.pi
    x, y, z = axis.unbind(1)
    o = torch.zeros_like(x)
    K_ = torch.stack([o, -z, y, z, o, -x, -y, x, o], 1).view(-1, 3, 3)
    torch.testing.assert_close(rodrigues(axis, angle), torch.linalg.matrix_exp(angle.view(-1, 1, 1) * K_))
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    assert torch.equal(rodrigues(axis, torch.zeros(50, dtype=torch.float64)), eye)  # exactly, not nearly


def test_random_rotations_are_proper_and_bounded():
    R = random_rotations(4000, 30.0, gen(), torch.device("cpu"), torch.float64)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(R))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(4000, dtype=torch.float64))
    angle = torch.rad2deg(torch.arccos(((R.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)))
    assert angle.max() <= 30 + 1e-6 and angle.max() > 29.5
    assert angle.mean().item() == pytest.approx(15, abs=0.5)  # uniform in [0, 30]
    # The axis of a rotation spans the null space of R - R^T; uniform axes have mean ~0 and covariance I / 3.
    axis = torch.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], 1)
    axis = F.normalize(axis, dim=1)
    torch.testing.assert_close(axis.T @ axis / 4000, torch.eye(3, dtype=torch.float64) / 3, atol=0.03, rtol=0)


def fit_maps(x: torch.Tensor, xo: torch.Tensor) -> torch.Tensor:
    """The (B, C, C) linear maps with xo_t = A x_t, by least squares over time (needs T >= C)."""
    return torch.linalg.lstsq(x.double(), xo.double()).solution.transpose(1, 2)


@pytest.mark.parametrize("norm", [None, NORM], ids=["raw", "normalised"])
def test_rotation_keeps_vector_norms_in_sensor_units(norm):
    x, y = batch(B=256, T=32)
    xo, _ = run(x, y, norm=norm, rotate=180)
    if norm is not None:  # the physical vector is x * std + mean
        mean, std = torch.tensor(norm["mean"]), torch.tensor(norm["std"])
        x, xo = x * std + mean, xo * std + mean
    torch.testing.assert_close(xo.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    A = fit_maps(x, xo)
    torch.testing.assert_close(torch.linalg.det(A), torch.ones(256, dtype=torch.float64), rtol=0, atol=1e-4)
    turned = (A - torch.eye(3, dtype=torch.float64)).abs().amax((1, 2)) > 1e-2
    assert turned.float().mean() > 0.95  # angles are uniform in [0, 180]: only a few turn a little
    if norm is not None:
        # Control: without the statistics the same seed turns the normalised values instead,
        # which does not keep physical lengths, so this test can tell the two apart.
        x_n = batch(B=256, T=32)[0]
        naive = run(x_n, y, rotate=180)[0] * torch.tensor(norm["std"]) + torch.tensor(norm["mean"])
        assert not torch.allclose(naive.norm(dim=-1), x.norm(dim=-1), rtol=1e-2)


def test_rotation_is_shared_by_every_3_axis_group():
    x, y = batch(B=32, T=24, C=6)
    xo, _ = run(x, y, rotate=180)
    A = fit_maps(x, xo)  # (B, 6, 6)
    torch.testing.assert_close(A[:, :3, :3], A[:, 3:, 3:])
    assert A[:, :3, 3:].abs().max() < 1e-5 and A[:, 3:, :3].abs().max() < 1e-5
    torch.testing.assert_close(torch.linalg.det(A[:, :3, :3]), torch.ones(32, dtype=torch.float64), rtol=0, atol=1e-4)


def test_rotation_needs_channels_in_threes():
    with pytest.raises(UsageError, match="set rotate to 0"):
        Augmenter(AugmentConfig.off(rotate=10), K, channels=4)
    Augmenter(AugmentConfig.off(jitter=0.1), K, channels=4)  # other transforms do not care


def test_scale_in_sensor_units_is_a_gain_on_the_raw_signal():
    x, y = batch(B=128, T=16)
    xo, _ = run(x, y, norm=NORM, scale=0.1)
    mean, std = torch.tensor(NORM["mean"]), torch.tensor(NORM["std"])
    raw, raw_o = x * std + mean, xo * std + mean
    gain = raw_o / raw  # (B, T, C): one value per window and axis, gravity included
    torch.testing.assert_close(gain, gain[:, :1].expand_as(gain), rtol=1e-4, atol=1e-4)


def test_time_warp_is_linear_interpolation_at_monotone_positions():
    B, T = 200, 64
    ramp = torch.arange(T, dtype=torch.float32).view(1, T, 1).expand(B, T, 1)
    other = torch.randn(B, T, 2, generator=gen(9))
    x = torch.cat([ramp, other], dim=2)
    xo, _ = run(x, torch.zeros(B, dtype=torch.long), time_warp=0.5, warp_knots=5)
    pos = xo[:, :, 0]  # a ramp samples to its own positions
    assert torch.equal(xo[:, 0], x[:, 0]) and torch.equal(xo[:, -1], x[:, -1])  # endpoints exactly
    assert (pos.diff(dim=1) >= 0).all()
    assert (pos - torch.arange(T)).abs().amax(1).min() > 0.1  # every window warped
    # The other channels: the obviously right reference, np.interp at those positions.
    ref = np.stack([[np.interp(pos[b].numpy(), np.arange(T), other[b, :, c].numpy()) for c in range(2)]
                    for b in range(B)]).transpose(0, 2, 1)
    np.testing.assert_allclose(xo[:, :, 1:].numpy(), ref, atol=2e-5)


def test_warp_positions_strictly_increasing_with_exact_ends():
    for T in (2, 3, 17, 128, 500):
        pos = warp_positions(300, T, 1.0, 4, gen(T), torch.device("cpu"))
        assert (pos[:, 0] == 0).all() and (pos[:, -1] == T - 1).all()
        assert (pos.diff(dim=1) > 0).all()


def test_resample_at_integer_positions_is_exact():
    x, _ = batch(B=8, T=20)
    idx = torch.randint(0, 20, (8, 30), generator=gen()).float()
    assert torch.equal(resample(x, idx), x[torch.arange(8).unsqueeze(1), idx.long()])


# --- mixing ----------------------------------------------------------------------------------------


def unique_labels(B: int, T: int, seed: int = 0):
    """A batch where each window is its own class, so a soft target names its partner."""
    x = torch.randn(B, T, 3, generator=gen(100 + seed))
    return x, torch.arange(B)


def partners(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(own share, partner index) from soft targets of unique_labels; partner = self when unmixed."""
    B = t.shape[0]
    own = t[torch.arange(B), torch.arange(B)]
    other = t.clone()
    other[torch.arange(B), torch.arange(B)] = -1
    j = torch.where(own < 1, other.argmax(1), torch.arange(B))
    return own, j


def test_mixup_blends_windows_and_labels_by_the_same_share():
    B = 256
    x, y = unique_labels(B, 16)
    xo, t = run(x, y, num_classes=B, mixup=0.4)
    torch.testing.assert_close(t.sum(1), torch.ones(B))
    assert ((t > 0).sum(1) <= 2).all()
    lam, j = partners(t)
    onehot = F.one_hot(y, B).float()
    torch.testing.assert_close(t, lam[:, None] * onehot + (1 - lam[:, None]) * onehot[j])
    torch.testing.assert_close(xo, lam[:, None, None] * x + (1 - lam[:, None, None]) * x[j])
    mixed = j[lam < 1]
    assert len(set(mixed.tolist())) == mixed.numel() > B // 2  # partners come from a permutation
    # Beta(0.4, 0.4) is U-shaped and symmetric: per-window shares, mean 1/2, mass near the ends.
    assert lam.mean().item() == pytest.approx(0.5, abs=0.06)
    assert ((lam < 0.1) | (lam > 0.9)).float().mean() > 0.3


def replaced_steps(x, xo, j):
    """(B, T) bool: steps copied verbatim from the partner; asserts every step is one or the other."""
    own = (xo == x).all(-1)
    theirs = (xo == x[j]).all(-1)
    assert (own | theirs).all()
    return theirs & ~own


def test_cutmix_replaces_one_segment_and_label_weight_is_its_length():
    B, T = 256, 40
    x, y = unique_labels(B, T)
    xo, t = run(x, y, num_classes=B, cutmix=1.0)
    own, j = partners(t)
    cut = replaced_steps(x, xo, j)
    torch.testing.assert_close(1 - own, cut.float().mean(1))  # exact fraction of replaced steps
    for row in cut:  # one contiguous segment per window
        assert (row.int().diff() != 0).sum() <= 2
    frac = cut.float().mean(1)
    assert frac.mean().item() == pytest.approx(0.5, abs=0.06)  # Beta(1, 1): uniform length
    # Starts spread over the window, not glued to t = 0.
    assert (cut[:, 0] == 0).float().mean() > 0.3


def test_mixup_or_cutmix_one_per_batch():
    kinds = []
    for seed in range(40):
        x, y = unique_labels(64, 24, seed)
        xo, t = run(x, y, num_classes=64, seed=seed, mixup=1.0, cutmix=1.0)
        _, j = partners(t)
        exact = ((xo == x) | (xo == x[j])).all(-1).all(-1)  # (B,): windows made only of verbatim steps
        assert exact.all() or exact.float().mean() < 0.2  # never a mix of both kinds within a batch
        kinds.append(bool(exact.all()))
    assert 8 <= sum(kinds) <= 32


def test_sample_beta_moments():
    for alpha in (0.2, 1.0, 5.0):
        lam = sample_beta(alpha, 20000, gen(), torch.device("cpu"))
        assert ((lam >= 0) & (lam <= 1)).all()
        assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
        assert lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


# --- erasing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,P", [(32, 4), (30, 4), (16, 1), (10, 16)])
def test_erase_zeroes_whole_patches_only(T, P):
    x = torch.rand(2000, T, 3) + 1  # never 0 on its own
    xo, _ = run(x, torch.zeros(2000, dtype=torch.long), erase=0.25, erase_patch=P)
    zero = xo == 0
    assert (zero.all(-1) | ~zero.any(-1)).all()  # all axes of a step or none
    steps = zero.all(-1)  # (B, T)
    patch = torch.arange(T) // P  # the grid starts at t = 0; the last patch may be short
    erased = []
    for k in range(-(-T // P)):
        seg = steps[:, patch == k]
        assert (seg.all(1) | ~seg.any(1)).all()  # each patch wholly erased or untouched
        erased.append(seg[:, 0])
    assert torch.stack(erased).float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert torch.equal(xo[~zero], x[~zero])  # the rest untouched


def test_erase_runs_after_mixing():
    x, y = unique_labels(512, 32)
    xo, _ = run(x, y, num_classes=512, mixup=1.0, erase=0.5)
    # Erased before mixing, a patch would be zero only where the partner's was erased too (~1/4).
    zero_patches = (xo == 0).all(-1).view(512, 8, 4).all(-1)
    assert zero_patches.float().mean().item() == pytest.approx(0.5, abs=0.03)


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(jitter=-0.1), dict(scale=-1), dict(rotate=-5), dict(rotate=190),
                                 dict(time_warp=-0.2), dict(mixup=-1), dict(cutmix=-0.5), dict(erase=1.5),
                                 dict(erase=-0.1), dict(erase_patch=0), dict(erase_patch=2.5), dict(warp_knots=1),
                                 dict(aug_p=-0.1), dict(aug_p=1.1), dict(jitter=float("nan")), dict(scale="0.1"),
                                 dict(aug_p=True)])
def test_bad_config_is_a_one_line_usage_error(bad):
    with pytest.raises(UsageError) as e:
        AugmentConfig.off(**bad)
    msg = str(e.value)
    assert "\n" not in msg and next(iter(bad)) in msg


def test_config_builds_from_yaml_like_layers():
    from har_vit.core.schema import build

    c = build(AugmentConfig, {"jitter": 0.05, "erase-patch": 8, "unrelated": 1}, {"rotate": 30})
    assert c == AugmentConfig(jitter=0.05, erase_patch=8, rotate=30) and c.enabled() and not c.mixing


def test_bad_norm_and_misuse():
    with pytest.raises(UsageError, match="positive std"):
        Augmenter(AugmentConfig.off(scale=0.1), K, norm={"mean": [0, 0, 0], "std": [1, 0, 1]})
    with pytest.raises(UsageError, match="3 each"):
        Augmenter(AugmentConfig.off(scale=0.1), K, norm={"mean": [0, 0], "std": [1, 1]})
    aug = Augmenter(AugmentConfig.off(jitter=0.1), K)
    x, y = batch()
    with pytest.raises(ValueError, match=r"\(B, T, 3\)"):
        aug(x[..., :2], y, gen())
    with pytest.raises(ValueError, match="labels"):
        aug(x, y[:3], gen())


# --- loss ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_soft_cross_entropy_one_hot_equals_int_labels(smoothing, weighted):
    logits = torch.randn(32, K, generator=gen(), requires_grad=True)
    y = torch.randint(0, K, (32,), generator=gen(1))
    w = torch.rand(K, generator=gen(2)) + 0.5 if weighted else None
    hard = soft_cross_entropy(logits, y, smoothing, w)
    soft = soft_cross_entropy(logits, F.one_hot(y, K).float(), smoothing, w)
    torch.testing.assert_close(hard, soft)
    if not weighted:
        torch.testing.assert_close(hard, F.cross_entropy(logits, y, label_smoothing=smoothing))
    # Reference: mean over samples of -sum_k w_k q_k log p_k, q the smoothed target.
    q = F.one_hot(y, K).float() * (1 - smoothing) + smoothing / K
    ref = -(q * (w if weighted else 1) * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(hard, ref)
    hard.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_soft_cross_entropy_on_mixed_targets():
    x, y = batch(B=16)
    _, t = run(x, y, mixup=0.4)
    logits = torch.randn(16, K, generator=gen(3), dtype=torch.bfloat16)
    ref = -(t * logits.float().log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, t.double()), ref)


# --- device ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_on_device_seeded_and_sync_free():
    dev = torch.device("cuda")
    x, y = batch(B=512, T=128)
    x, y = x.to(dev), y.to(dev)
    aug = Augmenter(AugmentConfig.off(**FULL, aug_p=0.7), K, norm=NORM)
    g = torch.Generator(device=dev).manual_seed(0)
    aug(x, y, g)  # warm-up: lazy init and the norm statistics' one-off copy may sync
    state = g.get_state()
    torch.cuda.set_sync_debug_mode("error")  # the trainer never waits for the host
    try:
        a, ta = aug(x, y, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    g.set_state(state)
    b, tb = aug(x, y, g)
    assert a.device.type == dev.type and ta.device.type == dev.type and ta.shape == (512, K)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    torch.testing.assert_close(ta.sum(1), torch.ones(512, device=dev))
    with pytest.raises(ValueError, match="generator"):
        aug(x, y, gen())

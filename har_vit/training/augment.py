"""Seeded, batched augmentation of accelerometer windows, run on the device once per training batch.

The trainer keeps the training split on the device, so augmentation is a handful of
batched tensor ops per step: no per-sample Python, no host round trip. The steps, in
the order they run, and why that order:

1. ``scale`` and ``rotate``: one random linear map of the axes per window (a gain per
   axis, then a 3D rotation), applied in sensor units when the normalisation
   statistics are given. Per-channel standardisation stretches each axis by a
   different amount, so a rotation of normalised values would not be a rotation of
   the acceleration vector (nor keep its length). Both fold into one batched matmul.
2. ``time_warp``: a smooth, strictly increasing resampling of the time axis with
   fixed endpoints (the same activity done a little faster here, slower there).
3. ``jitter``: white Gaussian noise, after the warp so that it stays white.
4. ``mixup`` or ``cutmix``: blend each window with a random partner from the batch,
   and its label with the partner's, by the same share.
5. ``erase``: zero whole patches last, so an erased patch is exactly 0 (the
   training mean in normalised units) whatever was mixed into it.

Every random draw comes from the caller's ``torch.Generator`` on the batch's device.
How many numbers are drawn, and of what shape, depends only on the config and the
batch shape, never on the values, so restoring a checkpointed generator state
continues a run bit-identically. Nothing reads a tensor back to the host, so a GPU
runs ahead of Python.

>>> aug = Augmenter(AugmentConfig.off(jitter=0.05, rotate=30, mixup=0.2), num_classes=6)
>>> gen = torch.Generator().manual_seed(0)
>>> x, target = aug(torch.randn(8, 128, 3), torch.randint(0, 6, (8,)), gen)
>>> x.shape, target.shape, target.dtype
(torch.Size([8, 128, 3]), torch.Size([8, 6]), torch.float32)
>>> loss = soft_cross_entropy(torch.randn(8, 6), target)  # also takes (B,) int labels
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from har_vit.core import schema
from har_vit.core.errors import UsageError

AXES = 3  # rotation acts on (x, y, z) vectors: channels are taken in consecutive groups of 3


@schema.config("augment")
class AugmentConfig:
    """What to augment and how strongly: the ``augment`` options of :mod:`har_vit.core.schema`.

    Defaults are the trainer's (light augmentation on); :meth:`off` turns everything off
    but what it is given. Strengths are in the units the windows are in (normalised
    units in the trainer), except ``scale`` and ``rotate``, which act in sensor units
    when the ``Augmenter`` is given the normalisation statistics.
    """

    @classmethod
    def off(cls, **on: float) -> "AugmentConfig":
        """Every transform off except those in ``on``: ``AugmentConfig.off(jitter=0.1)`` only adds noise."""
        zero = {o.name: 0.0 for o in schema.group_options("augment") if o.kind is float and o.name != "aug_p"}
        return cls(**{**zero, **on})

    def enabled(self) -> bool:
        """True when any transform can change a batch."""
        strengths = (self.jitter, self.scale, self.rotate, self.time_warp, self.mixup, self.cutmix, self.erase)
        return self.aug_p > 0 and any(s > 0 for s in strengths)

    @property
    def mixing(self) -> bool:
        """True when targets come out soft, ``(B, num_classes)`` float: mixup or cutmix is on."""
        return self.aug_p > 0 and (self.mixup > 0 or self.cutmix > 0)


class Augmenter:
    """Apply an :class:`AugmentConfig` to batches ``x`` (B, T, C) with labels ``y`` (B,).

    ``channels`` is C; with ``rotate`` on it must be a multiple of 3, and every group of
    3 consecutive channels gets the same rotation (sensors in one housing turn
    together). ``norm`` is the trainer's ``{"mean": [C], "std": [C]}``: when given,
    ``scale`` and ``rotate`` act on ``x * std + mean`` and the result is normalised back.

    Calling it returns ``(x, target)``: ``x`` (B, T, C) in ``x``'s dtype, and either ``y``
    itself or, when mixing is on, float32 soft labels (B, num_classes) whose rows sum
    to 1. Label smoothing belongs to the loss (:func:`soft_cross_entropy`), not here.
    With both ``mixup`` and ``cutmix`` set, each batch uses one of them, picked with
    probability 1/2 (timm's switch). Within a batch every window draws its own share
    (timm's "elem" mode), so ``p`` can leave single windows unmixed.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, channels: int = AXES,
                 norm: Mapping[str, Sequence[float]] | None = None):
        if num_classes < 1 or channels < 1:
            raise UsageError(f"augmentation needs num_classes >= 1 and channels >= 1 (got {num_classes}, {channels})")
        if cfg.rotate > 0 and channels % AXES:
            raise UsageError(f"rotate needs channels in groups of 3 axes (x, y, z), but the windows have {channels} "
                             "channels; set rotate to 0")
        self.cfg, self.num_classes, self.channels = cfg, int(num_classes), int(channels)
        self._norm: tuple[Tensor, Tensor] | None = None
        if norm is not None:
            mean = torch.as_tensor(norm["mean"], dtype=torch.float64)
            std = torch.as_tensor(norm["std"], dtype=torch.float64)
            if mean.shape != (channels,) or std.shape != (channels,) or not bool((std > 0).all()):
                raise UsageError(f"norm needs a mean and a positive std per channel ({channels} each); "
                                 f"got {list(mean.shape)} and {list(std.shape)}: pass the trainer's train statistics")
            self._norm = (mean, std)
        self._norm_on: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (f"Augmenter({self.cfg}, num_classes={self.num_classes}, channels={self.channels}, "
                f"sensor_units={self._norm is not None})")

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        if not cfg.enabled():
            return x, y
        if x.dim() != 3 or x.shape[2] != self.channels or not x.is_floating_point():
            raise ValueError(f"expected float windows (B, T, {self.channels}), got {x.dtype} {tuple(x.shape)}")
        if y.shape != x.shape[:1]:
            raise ValueError(f"expected labels (B,) = ({x.shape[0]},), got {tuple(y.shape)}")
        # By type (and index where both name one): a generator made on "cuda" reports
        # device "cuda" while the batch is on "cuda:0", which is the same device.
        g, d = gen.device, x.device
        if g.type != d.type or (g.index is not None and d.index is not None and g.index != d.index):
            raise ValueError(f"the generator is on {gen.device} but the batch is on {x.device}; "
                             "make it with torch.Generator(device=x.device)")
        B, T, C = x.shape
        dev = x.device
        wide = torch.promote_types(x.dtype, torch.float32)  # random parameters: at least fp32 even for bf16 data

        if cfg.scale > 0 or cfg.rotate > 0:
            A = torch.eye(C, dtype=wide, device=dev).expand(B, C, C)  # (B, C, C) per-window map of the axes
            if cfg.scale > 0:
                gain = 1 + cfg.scale * torch.randn(B, C, generator=gen, device=dev, dtype=wide)  # (B, C)
                A = torch.diag_embed(_keep(gain, self._pick(B, gen, dev), 1.0))
            if cfg.rotate > 0:
                R = _keep(random_rotations(B, cfg.rotate, gen, dev, wide), self._pick(B, gen, dev), 0.0,
                          torch.eye(AXES, dtype=wide, device=dev))  # (B, 3, 3)
                R = block_diagonal(R, C // AXES)  # one rotation per window, for every 3-axis group
                A = R @ A  # gain in the sensor frame first, then turn the sensor
            x = self._linear(x, A)

        if cfg.time_warp > 0 and T > 1:
            pos = warp_positions(B, T, cfg.time_warp, cfg.warp_knots, gen, dev, wide)  # (B, T)
            pos = _keep(pos, self._pick(B, gen, dev), 0.0, torch.arange(T, dtype=wide, device=dev))
            x = resample(x, pos)

        if cfg.jitter > 0:
            noise = torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)  # (B, T, C)
            sel = self._pick(B, gen, dev)
            if sel is not None:
                noise = noise * sel.view(B, 1, 1)
            x = x + cfg.jitter * noise

        target = y
        if cfg.mixing:
            x, target = self._mix(x, y, gen)

        if cfg.erase > 0:
            P = cfg.erase_patch
            hit = torch.rand(B, -(-T // P), generator=gen, device=dev) < cfg.erase  # (B, ceil(T / P)) patches
            sel = self._pick(B, gen, dev)
            if sel is not None:
                hit = hit & sel.unsqueeze(1)
            steps = hit[:, torch.arange(T, device=dev) // P]  # (B, T): each patch's flag on its steps
            x = x.masked_fill(steps.unsqueeze(-1), 0)
        return x, target

    # --- pieces --------------------------------------------------------------------------------------

    def _pick(self, B: int, gen: torch.Generator, device: torch.device) -> Tensor | None:
        """(B,) bool: the windows this transform touches; None (all of them, no draw) when p == 1."""
        if self.cfg.aug_p >= 1:
            return None
        return torch.rand(B, generator=gen, device=device) < self.cfg.aug_p

    def _linear(self, x: Tensor, A: Tensor) -> Tensor:
        """``x_t -> A x_t`` for every step, in sensor units when normalisation statistics are known.

        With ``x = (u - m) / s`` (per channel), ``A`` acting on ``u`` is, on ``x``:
        ``x -> D^-1 A D x + D^-1 (A - I) m`` with ``D = diag(s)``: one batched affine map.
        Where ``A`` is the identity the result is bit-identical to the input.
        """
        B, _, C = x.shape
        if self._norm is None:
            return torch.bmm(x, A.to(x.dtype).transpose(1, 2))  # (B, T, C) @ (B, C, C)
        key = (x.device, A.dtype)
        if key not in self._norm_on:  # a 2 x C copy, once per device and dtype rather than per batch
            self._norm_on[key] = (self._norm[0].to(x.device, A.dtype), self._norm[1].to(x.device, A.dtype))
        mean, std = self._norm_on[key]
        M = A * std / std.unsqueeze(1)  # (B, C, C): M[d, c] = A[d, c] s_c / s_d
        eye = torch.eye(C, dtype=A.dtype, device=x.device)
        b = ((A - eye) @ mean) / std  # (B, C)
        return torch.baddbmm(b.unsqueeze(1).to(x.dtype), x, M.to(x.dtype).transpose(1, 2))

    def _mix(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Blend every window with a random partner; (x, soft targets (B, K) float32).

        Both mixup and cutmix are ``x_i <- x_i + w_it (x_j - x_i)``: mixup with one share
        ``w_i = 1 - lambda_i`` on every step, cutmix with ``w_it = 1`` on one contiguous
        segment. The label moves by the mean share over time, so for cutmix it is the
        exact fraction of replaced steps (not the drawn lambda, which the rounding of the
        segment length would make slightly wrong).
        """
        cfg = self.cfg
        B, T, _ = x.shape
        dev = x.device
        # Sorting random keys is a uniform permutation drawn without a host sync (ties have
        # probability ~0, and would only make the permutation slightly non-uniform).
        partner = torch.rand(B, generator=gen, device=dev).argsort()  # (B,)
        share_mix = share_cut = None
        if cfg.mixup > 0:
            lam = sample_beta(cfg.mixup, B, gen, dev)  # (B,) share of the window itself
            share_mix = (1 - lam).unsqueeze(1).expand(B, T)  # (B, T)
        if cfg.cutmix > 0:
            lam = sample_beta(cfg.cutmix, B, gen, dev)
            length = ((1 - lam) * T).round()  # (B,) replaced steps
            start = (torch.rand(B, generator=gen, device=dev) * (T - length + 1)).floor().clamp_max(T - length)
            t = torch.arange(T, device=dev, dtype=lam.dtype)
            share_cut = ((t >= start.unsqueeze(1)) & (t < (start + length).unsqueeze(1))).to(lam.dtype)  # (B, T)
        if share_mix is not None and share_cut is not None:
            use_cut = torch.rand((), generator=gen, device=dev) < 0.5  # one choice per batch, on the device
            share = torch.where(use_cut, share_cut, share_mix)
        else:
            share = share_mix if share_mix is not None else share_cut
        sel = self._pick(B, gen, dev)
        if sel is not None:
            share = share * sel.unsqueeze(1)
        # lerp is exact at weights 0 and 1, so cut segments are verbatim copies of the partner.
        x = torch.lerp(x, x[partner], share.unsqueeze(-1).to(x.dtype))
        onehot = F.one_hot(y.long(), self.num_classes).float()  # (B, K)
        target = torch.lerp(onehot, onehot[partner], share.mean(1, keepdim=True).float())
        return x, target


# --- batched building blocks (public for tests and for reuse) -----------------------------------------


def _keep(new: Tensor, sel: Tensor | None, off: float, identity: Tensor | None = None) -> Tensor:
    """``new`` where ``sel`` (B,) is True, else the identity value (``identity`` if given, else ``off``)."""
    if sel is None:
        return new
    sel = sel.view(-1, *([1] * (new.dim() - 1)))
    fallback = identity if identity is not None else torch.full((), off, dtype=new.dtype, device=new.device)
    return torch.where(sel, new, fallback)


def block_diagonal(A: Tensor, groups: int) -> Tensor:
    """``(B, k, k)`` maps -> ``(B, k * groups, k * groups)`` with each map repeated on the diagonal.

    Sensors in one housing turn together: every (x, y, z) group of channels gets the same map.

    >>> block_diagonal(torch.full((1, 1, 1), 2.0), 2)[0].tolist()
    [[2.0, 0.0], [0.0, 2.0]]
    """
    if groups == 1:
        return A
    B, k, _ = A.shape
    eye = torch.eye(groups, dtype=A.dtype, device=A.device)
    return torch.einsum("gh,bij->bgihj", eye, A).reshape(B, k * groups, k * groups)


def sample_beta(alpha: float, n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """(n,) float32 draws from Beta(alpha, alpha), as G1 / (G1 + G2) of two Gamma(alpha) draws.

    ``torch.distributions.Beta`` takes no generator; ``torch._standard_gamma`` (which
    it uses underneath) does.
    """
    g = torch._standard_gamma(torch.full((2, n), float(alpha), device=device), generator=gen)  # (2, n)
    # Both gammas can underflow to 0 for tiny alpha; 0 is then as good a share as any.
    return g[0] / (g[0] + g[1]).clamp_min(torch.finfo(g.dtype).tiny)


def rodrigues(axis: Tensor, angle: Tensor) -> Tensor:
    """Rotation matrices (B, 3, 3) by ``angle`` (B,) radians about unit ``axis`` (B, 3).

    ``R = I + sin(a) K + (1 - cos(a)) K^2`` with ``K`` the cross-product matrix of the
    axis; ``angle = 0`` gives exactly the identity.

    >>> rodrigues(torch.tensor([[0., 0., 1.]]), torch.tensor([math.pi / 2])).round().int()[0].tolist()
    [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    """
    ax, ay, az = axis.unbind(-1)  # (B,) each
    zero = torch.zeros_like(ax)
    K = torch.stack([zero, -az, ay, az, zero, -ax, -ay, ax, zero], dim=-1).view(-1, 3, 3)  # (B, 3, 3)
    s = angle.sin().view(-1, 1, 1)
    c = angle.cos().view(-1, 1, 1)
    return torch.eye(3, dtype=axis.dtype, device=axis.device) + s * K + (1 - c) * (K @ K)


def random_rotations(n: int, max_degrees: float, gen: torch.Generator, device: torch.device,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """(n, 3, 3) rotations about uniform random axes by angles uniform in [0, max_degrees].

    A normalised isotropic Gaussian is uniform on the sphere. Angles are uniform, not
    Haar-distributed, so even at 180 small turns are more common than among uniformly
    random orientations: the augmentation stays nearer the recorded pose.
    """
    axis = torch.randn(n, 3, generator=gen, device=device, dtype=dtype)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    angle = torch.rand(n, generator=gen, device=device, dtype=dtype) * math.radians(max_degrees)
    return rodrigues(axis, angle)


def warp_positions(n: int, T: int, strength: float, knots: int, gen: torch.Generator, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """(n, T) strictly increasing sample positions from exactly 0 to exactly T - 1.

    A log-normal playback speed is drawn at ``knots`` evenly spaced knots, linearly
    interpolated to the T - 1 gaps between output steps, summed into positions and
    rescaled to span the window. A positive speed makes the warp strictly monotone, so
    the order of events is kept; the rescale keeps the window's duration.
    """
    speed = torch.exp(strength * torch.randn(n, 1, knots, generator=gen, device=device, dtype=dtype))  # (n, 1, K)
    gap = F.interpolate(speed, size=T - 1, mode="linear", align_corners=True).squeeze(1)  # (n, T - 1)
    pos = torch.cat([torch.zeros(n, 1, dtype=dtype, device=device), gap.cumsum(1)], dim=1)  # (n, T)
    # Divide first: last / last is exactly 1, so the end lands exactly on T - 1.
    return (pos / pos[:, -1:] * (T - 1)).clamp(0, T - 1)


def resample(x: Tensor, pos: Tensor) -> Tensor:
    """Linear interpolation of ``x`` (B, T, C) at fractional steps ``pos`` (B, T') in [0, T - 1].

    Integer positions return the samples exactly (bit for bit).
    """
    B, T, C = x.shape
    lo = pos.floor().long().clamp(0, max(T - 2, 0))  # (B, T'): left neighbour, so lo + 1 stays in the window
    hi = (lo + 1).clamp_max(T - 1)
    frac = (pos - lo).to(x.dtype)  # (B, T')
    # Rows of the flattened batch: one index_select of 3-float rows beats two gathers of single floats.
    base = torch.arange(0, B * T, T, device=x.device).unsqueeze(1)  # (B, 1): first row of each window
    rows = torch.cat([(lo + base).view(-1), (hi + base).view(-1)])  # (2 B T',)
    left, right = x.reshape(B * T, C).index_select(0, rows).view(2, B, -1, C).unbind(0)  # (B, T', C) each
    # lerp is exact at weights 0 and 1; a broadcast weight takes a slower path on CPU, hence expand_as.
    return torch.lerp(left, right, frac.unsqueeze(-1).expand_as(left))


def soft_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0,
                       weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of ``logits`` (B, K) against int labels (B,) or soft labels (B, K).

    The plain mean over samples in both cases, with optional per-class ``weight``
    (K,): torch's default divides hard-label losses by the summed weights instead, which
    would make a one-hot target and its int label disagree, and equal DDP shards no
    longer average to the global batch. Smoothing mixes ``label_smoothing / K`` into
    every target, hard or soft. Computed in float32 whatever the logits' dtype.
    """
    if target.is_floating_point():
        target = target.float()
    return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=label_smoothing,
                           reduction="none").mean()

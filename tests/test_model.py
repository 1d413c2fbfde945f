"""The model package: every registered variant, the seed network's per-axis attention and FLOPs, layers.

That seed is the article's network is proved in test_article.py against a reference.

Run: ``pytest tests/test_model.py -q`` (10-45 s on the shared 2-core CPU).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from har_vit.core.errors import UsageError
from har_vit.model import HarViT, ViTConfig, count_flops, create_model, list_models
from har_vit.model.layers import Attention, Mlp, PatchMerge1d

ARTICLE_FLOPS = 58.56e6
MODELS = list_models(classical=False)  # networks; the forest has tests of its own
# torch.jit.trace and the TorchScript ONNX exporter are deprecated in recent torch, but
# users still trace and export models with them: test them quietly.
quiet_deprecation = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def seed_model() -> HarViT:
    return create_model("seed").eval()


def _model(name: str, **kwargs) -> HarViT:
    torch.manual_seed(0)
    return create_model(name, **kwargs).eval()


@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_finite_logits(name):
    out = _model(name)(torch.randn(4, 128, 3))
    assert out.shape == (4, 6)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name):
    model = _model(name).train()
    torch.manual_seed(1)
    loss = nn.functional.cross_entropy(model(torch.randn(8, 128, 3)), torch.arange(8) % 6)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_dict_rebuilds_identical_model(name, tmp_path):
    model = _model(name, drop=0.3)  # an override must survive the round trip too
    path = tmp_path / "ckpt.pt"
    torch.save({"model_name": model.name, "model_kwargs": model.kwargs, "model": model.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    torch.manual_seed(123)  # different init, so only the loaded weights can make outputs match
    rebuilt = create_model(ckpt["model_name"], **ckpt["model_kwargs"]).eval()
    rebuilt.load_state_dict(ckpt["model"])
    x = torch.randn(5, 128, 3)
    assert rebuilt.cfg == model.cfg
    assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("window,channels,classes", [(64, 6, 18), (256, 3, 6), (88, 3, 4)])
def test_other_input_shapes(name, window, channels, classes):
    # 88 / 4 = 22 patches -> 11 -> 6 (odd count padded) -> 3: the head must follow.
    model = _model(name, window=window, channels=channels, num_classes=classes)
    out = model(torch.randn(2, window, channels))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()
    feats = model.forward_features(torch.randn(2, window, channels))
    assert feats.shape[1:] == (model.cfg.groups, model.cfg.final_patches, model.cfg.dims[-1])


@quiet_deprecation
@pytest.mark.parametrize("name", MODELS)
def test_jit_trace_matches_eager_at_any_batch(name):
    model = _model(name)
    traced = torch.jit.trace(model, torch.randn(2, 128, 3))
    x = torch.randn(5, 128, 3)  # another batch size: nothing may be baked into the trace
    torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_torch_export_with_dynamic_batch_matches_eager(name):
    model = _model(name)
    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(model, (torch.randn(2, 128, 3),), dynamic_shapes={"x": {0: batch}})
    x = torch.randn(5, 128, 3)
    torch.testing.assert_close(exported.module()(x), model(x))


@quiet_deprecation
@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_is_valid_and_matches(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    model, path = _model(name), tmp_path / f"{name}.onnx"
    # Legacy (TorchScript) exporter: seconds instead of the dynamo exporter's tens of
    # seconds here; torch.export itself is covered by test_torch_export_matches_eager.
    torch.onnx.export(model, (torch.randn(2, 128, 3),), path, dynamo=False,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(onnx.load(path), full_check=True)
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(3, 128, 3)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=1e-4)


# --- the article's network -------------------------------------------------------

def test_seed_attention_is_within_each_axis(seed_model):
    # Tokens of axis 0 must not depend on axis 2: attention runs per axis.
    x = torch.randn(2, 128, 3)
    y = x.clone()
    y[..., 2] += 1.0
    with torch.no_grad():
        fx, fy = seed_model.forward_features(x), seed_model.forward_features(y)
    torch.testing.assert_close(fx[:, :2], fy[:, :2])
    assert not torch.allclose(fx[:, 2], fy[:, 2])


def test_seed_flops_near_the_article(seed_model):
    flops, skipped = count_flops(seed_model, torch.zeros(1, 128, 3))
    print(f"\nseed fvcore FLOPs (MACs): {flops:,} vs article {ARTICLE_FLOPS:,.0f}; skipped ops {skipped}")
    assert abs(flops - ARTICLE_FLOPS) / ARTICLE_FLOPS < 0.05
    assert seed_model.flops() == flops
    assert "aten::scaled_dot_product_attention" not in skipped


@quiet_deprecation
def test_flops_count_attention_matmuls(seed_model):
    from fvcore.nn import FlopCountAnalysis

    x = torch.zeros(1, 128, 3)
    without = FlopCountAnalysis(seed_model.eval(), x)
    without.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # q @ k^T and attn @ v: 2 * N^2 * D multiply-adds per axis, at N = 32, 16, 8 patches.
    expected = sum(3 * 2 * n * n * 256 for n in (32, 16, 8))
    assert count_flops(seed_model, x)[0] - without.total() == expected


@pytest.mark.parametrize("name", [n for n in MODELS if n != "seed"])
def test_variant_within_tenth_of_seed(name, seed_model):
    model = _model(name)
    assert model.num_params() <= 0.1 * seed_model.num_params()
    assert model.flops() <= 0.1 * seed_model.flops()


# --- layers against simple references ---------------------------------------------

@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
def test_patch_merge_halves_and_zero_pads_odd_counts(n, fixed):
    torch.manual_seed(0)
    merge, x = PatchMerge1d(4, 6, patches=n if fixed else None), torch.randn(2, n, 4)
    out = merge(x)
    assert out.shape == (2, math.ceil(n / 2), 6)
    for i in range(math.ceil(n / 2)):
        right = x[:, 2 * i + 1] if 2 * i + 1 < n else torch.zeros(2, 4)
        ref = merge.reduction(merge.norm(torch.cat([x[:, 2 * i], right], dim=-1)))
        torch.testing.assert_close(out[:, i], ref)


def test_mlp_runs_its_depthwise_conv1d_weights_as_the_conv1d_would():
    """The MLP runs its Conv1d's weights through a 2D conv (faster on CPU): same outputs and
    gradients as the Conv1d module itself, to float tolerance, and the same parameters."""
    torch.manual_seed(0)
    mlp = Mlp(8, 16, conv_kernel=5).eval()
    assert isinstance(mlp.conv, nn.Conv1d) and mlp.conv.weight.shape == (16, 1, 5)
    x = torch.randn(3, 7, 8, requires_grad=True)

    def by_conv1d(x: torch.Tensor) -> torch.Tensor:
        h = mlp.fc1(x)
        return mlp.fc2(mlp.act(h + mlp.conv(h.transpose(1, 2)).transpose(1, 2)))

    got, want = mlp(x), by_conv1d(x)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got.square().sum(), [x, mlp.conv.weight, mlp.conv.bias])
    g_want = torch.autograd.grad(want.square().sum(), [x, mlp.conv.weight, mlp.conv.bias])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours, ref = Attention(32, heads=4), nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0])


# --- registry ----------------------------------------------------------------------

def test_unknown_model_names_the_known_ones():
    with pytest.raises(UsageError, match="known models: .*seed"):
        create_model("vit_huge")


def test_unknown_option_is_a_usage_error():
    with pytest.raises(UsageError, match="depht"):
        create_model("seed", depht=3)


def test_window_not_multiple_of_patch_is_a_usage_error():
    with pytest.raises(UsageError, match="window 130"):
        create_model("seed", window=130)


@pytest.mark.parametrize("bad", [dict(embed_kernel=7), dict(mlp_conv=4), dict(pool="max"), dict(dims=(256, 200, 256))])
def test_bad_config_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="bad model config"):
        create_model("tiny", **bad)


@pytest.mark.parametrize("shape", [(2, 64, 3), (2, 128, 6), (128, 3)])
def test_wrong_input_shape_says_what_the_model_takes(shape):
    with pytest.raises(UsageError, match=r"\(batch, 128, 3\)"):
        _model("seed")(torch.zeros(shape))


def test_config_accepts_lists_from_yaml_and_checkpoints():
    assert ViTConfig(dims=[256, 256, 256], depths=[1, 1, 1]) == ViTConfig()


def test_dilated_stem_option_feeds_the_patches():
    """``stem=W``: a multi-dilation conv stem (off in every variant) whose output the patches embed."""
    model = _model("tiny", stem=32).train()
    assert model.stem is not None and model.patch_embed.proj.kernel_size[1] == 32
    out = model(torch.randn(4, 128, 3))
    assert out.shape == (4, 6)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.stem.parameters())
    with pytest.raises(UsageError, match="stem 30"):
        create_model("tiny", stem=30)  # not a multiple of the 4 dilations
    with pytest.raises(UsageError, match="stem 32 needs joint_axes"):
        create_model("seed", stem=32)


def test_window_scale_shows_small_movements_at_full_scale():
    """``tiny_ws`` adds, per axis, the window standardised by its own mean and std and its log std."""
    from har_vit.model.layers import WindowScale

    g = torch.Generator().manual_seed(0)
    still = torch.randn(2, 128, 3, generator=g) * 0.01 + torch.tensor([0.1, -1.5, 0.4])  # a near-static window
    moving = still * 300 - 7  # the same movement, 300 times larger, elsewhere
    a, b = WindowScale()(still), WindowScale()(moving)
    assert a.shape == (2, 128, 9)
    torch.testing.assert_close(a[..., :3], still)  # the input itself comes first
    # the same shape at any size (within 1%: eps, a variance of 1e-6, is 1% of this still window's)
    torch.testing.assert_close(a[..., 3:6], b[..., 3:6], atol=0, rtol=1e-2)
    assert a[..., 3:6].std(dim=1).sub(1).abs().max() < 1e-2  # at unit scale, not at 1% of it
    torch.testing.assert_close(b[:, 0, 6:] - a[:, 0, 6:], torch.full((2, 3), math.log(300)), atol=1e-2, rtol=0)
    torch.testing.assert_close(a[:, 0, 6:], still.std(dim=1, unbiased=False).log(), atol=1e-2, rtol=0)
    flat = WindowScale()(torch.ones(1, 128, 3))
    assert torch.isfinite(flat).all() and flat[..., 3:6].abs().max() == 0  # a constant window stays finite
    model = _model("tiny_ws")
    assert model.cfg.window_scale and model.patch_embed.proj.kernel_size[1] == 9
    with pytest.raises(UsageError, match="window_scale needs joint_axes"):
        create_model("seed", window_scale=True)

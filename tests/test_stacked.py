"""Models trained together as one stacked model end as each would alone (float tolerance)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from har_vit.core.checkpoint import load_checkpoint
from har_vit.core.errors import UsageError
from har_vit.model import create_model, noise
from har_vit.stages.train import TrainConfig, run
from har_vit.stages.windows import WindowConfig, import_npz
from har_vit.training.stacked import StackedAdamW, train_together

# Dropout and drop-path well above the defaults, augmentation on (the default rotation, scale and
# time warp, and jitter, off by default since 2026-12-02), and two folds whose training sets differ in size, with different seeds
# and learning rates: everything that could make a stacked model drift from its own run.
COMMON = dict(model="tiny", epochs=3, batch_size=16, drop=0.3, drop_path=0.3, jitter=0.05, progress=False, threads=1)
CFGS = [TrainConfig(seed=0, test_users=(1,), **COMMON),
        TrainConfig(seed=1, test_users=(2, 3), lr=1e-3, **COMMON)]


@pytest.fixture
def windows(tmp_path, windows_npz):
    out = tmp_path / "windows"
    import_npz(WindowConfig(), windows_npz, out)
    return out


def weights(folder, which="last.pt"):
    return load_checkpoint(folder / which)


def assert_same_run(alone, stacked):
    assert stacked["epoch"] == alone["epoch"] and stacked["best"] == alone["best"]
    assert stacked["scheduler"]["last_epoch"] == alone["scheduler"]["last_epoch"]
    for k in alone["model"]:
        torch.testing.assert_close(stacked["model"][k], alone["model"][k], rtol=1e-4, atol=1e-4)
    for h_alone, h_stacked in zip(alone["history"], stacked["history"], strict=True):
        for key in ("lr", "train_loss", "val_loss", "val_macro_f1"):
            assert h_stacked[key] == pytest.approx(h_alone[key], rel=1e-4, abs=1e-5)
    for i, st in alone["optimizer"]["state"].items():
        torch.testing.assert_close(stacked["optimizer"]["state"][i]["exp_avg"], st["exp_avg"], rtol=1e-3, atol=1e-6)
        assert float(stacked["optimizer"]["state"][i]["step"]) == float(st["step"])
    # The dropout stream, shuffle and augmentation generators continue where the run's own would.
    for key in ("torch", "shuffle"):
        assert torch.equal(stacked["rng"][key], alone["rng"][key])
    assert torch.equal(stacked["rng"]["augment"][0], alone["rng"]["augment"][0])


@pytest.mark.parametrize("model", ["tiny", "tiny_ws"])
def test_two_models_trained_together_equal_the_same_two_trained_apart(tmp_path, windows, model):
    cfgs = [dataclasses.replace(cfg, model=model) for cfg in CFGS]
    apart = [run(cfg, windows, tmp_path / f"apart{i}") for i, cfg in enumerate(cfgs)]
    together = train_together(cfgs, windows, [tmp_path / f"together{i}" for i in range(2)], echo=lambda s: None)
    sizes = {m["split"]["n_train"] for m in apart}
    assert len(sizes) == 2, "the two folds must differ in size"
    for i in range(2):
        assert_same_run(weights(tmp_path / f"apart{i}"), weights(tmp_path / f"together{i}"))
        b_alone, b_stacked = weights(tmp_path / f"apart{i}", "best.pt"), weights(tmp_path / f"together{i}", "best.pt")
        assert b_stacked["epoch"] == b_alone["epoch"]
        for k in b_alone["model"]:
            torch.testing.assert_close(b_stacked["model"][k], b_alone["model"][k], rtol=1e-4, atol=1e-4)
        for key in ("epochs_run", "best_epoch", "norm", "class_names", "split", "augment"):
            assert together[i][key] == apart[i][key]


def test_a_stack_resumes_an_interrupted_model_beside_a_new_one(tmp_path, windows):
    run(CFGS[0], windows, tmp_path / "alone")
    part = run(CFGS[0], windows, tmp_path / "resumed", stop_after=1)
    assert part["finished"] is False
    train_together(CFGS, windows, [tmp_path / "resumed", tmp_path / "new"], resume=[True, False],
                   echo=lambda s: None)
    assert_same_run(weights(tmp_path / "alone"), weights(tmp_path / "resumed"))
    # ...and a model finished in a stack continues alone: last.pt holds its own optimizer and RNG state.
    assert weights(tmp_path / "new")["rng"]["torch"].shape == torch.get_rng_state().shape


def test_fed_masks_are_the_draws_a_model_makes_alone():
    torch.manual_seed(0)
    model = create_model("tiny", drop=0.2, drop_path=0.2).train()
    x = torch.randn(4, 128, 3)
    with torch.no_grad(), noise.feeding(None) as rec:
        model(x)
    kinds = {d.kind for d in rec.drawn}
    assert kinds == {"dropout", "attention", "drop_path"}
    torch.manual_seed(7)
    alone = model(x)
    masks = noise.draw(rec.drawn, torch.Generator().manual_seed(7), torch.device("cpu"))
    with noise.feeding(masks) as feed:
        fed = model(x)
    assert feed.left() == 0
    torch.testing.assert_close(fed, alone, rtol=1e-5, atol=1e-6)
    with noise.feeding(masks[:-1]), pytest.raises(RuntimeError, match="more random masks"):
        model(x)


def test_stacked_adamw_is_torch_adamw_per_model():
    torch.manual_seed(0)
    ps = [torch.randn(5, 3, requires_grad=True) for _ in range(2)]
    opts = [torch.optim.AdamW([p], lr=lr, weight_decay=wd) for p, lr, wd in zip(ps, (1e-2, 3e-3), (0.05, 0.0),
                                                                               strict=True)]
    decay = {"w": torch.tensor([0.05, 0.0], dtype=torch.float64)}
    stacked = StackedAdamW({"w": torch.stack([p.detach() for p in ps])}, decay, (0.9, 0.999), 1e-8)
    for k in range(1, 6):
        grads = [torch.randn(5, 3) for _ in ps]
        for p, g, o in zip(ps, grads, opts, strict=True):
            p.grad = g
            o.step()
        stacked.step({"w": torch.stack(grads)}, torch.tensor([1e-2, 3e-3], dtype=torch.float64), torch.tensor([k, k]))
    torch.testing.assert_close(stacked.params["w"], torch.stack([p.detach() for p in ps]), rtol=1e-6, atol=1e-7)


def test_a_stack_refuses_what_it_cannot_hold(tmp_path, windows):
    with pytest.raises(UsageError, match="rf.*train it alone"):
        train_together([TrainConfig(model="rf", progress=False)], windows, [tmp_path / "rf"])
    mixed = [CFGS[0], TrainConfig(**{**COMMON, "batch_size": 8}, seed=2, test_users=(4,))]
    with pytest.raises(UsageError, match="--batch-size"):
        train_together(mixed, windows, [tmp_path / "a", tmp_path / "b"], echo=lambda s: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing half-written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stacked_on_cuda_tracks_the_models_trained_apart(tmp_path, windows):
    """On CUDA (bf16 autocast, fused dropout alone vs fed masks in a stack) equality is loose:
    without dropout the two ways differ only by rounding, far below what separates two seeds."""
    cfgs = [TrainConfig(**{**COMMON, "drop": 0.0, "drop_path": 0.0, "epochs": 1, "device": "cuda"}, seed=s,
                        test_users=t) for s, t in ((0, (1,)), (1, (2, 3)))]
    for i, cfg in enumerate(cfgs):
        run(cfg, windows, tmp_path / f"apart{i}")
    train_together(cfgs, windows, [tmp_path / f"together{i}" for i in range(2)], echo=lambda s: None)
    for i in range(2):
        a, b = weights(tmp_path / f"apart{i}")["model"], weights(tmp_path / f"together{i}")["model"]
        other = weights(tmp_path / f"apart{1 - i}")["model"]
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=5e-3)
        assert max(float((other[k] - a[k]).abs().max()) for k in a) > 5e-2  # seeds differ by far more


def test_models_dealt_to_two_processes_end_as_each_would_alone(tmp_path, windows):
    """cv on the CPU: the models dealt to 2 processes, each a stack of 2, train as each alone."""
    from har_vit.training.workers import train_stacks

    cfgs = [*CFGS, dataclasses.replace(CFGS[0], seed=2), dataclasses.replace(CFGS[1], seed=3)]
    for i, cfg in enumerate(cfgs):
        run(cfg, windows, tmp_path / f"apart{i}")
    lines = []
    manifests, split = train_stacks(cfgs, windows, [tmp_path / f"w{i}" for i in range(4)], workers=2,
                                    echo=lines.append)
    assert split == {"workers": 2, "models": [2, 2], "threads": 1}
    assert "4 models in 2 processes (2 + 2 models" in lines[0]
    assert [m["config"]["seed"] for m in manifests] == [0, 1, 2, 3]  # in the order asked, whichever process trained them
    for i in range(4):
        assert_same_run(weights(tmp_path / f"apart{i}"), weights(tmp_path / f"w{i}"))


def test_a_failing_process_stops_the_others_and_its_error_reaches_the_caller(tmp_path, windows):
    import multiprocessing as mp

    from har_vit.training.workers import train_stacks

    long = dataclasses.replace(CFGS[0], epochs=500)  # would train for minutes if not stopped
    bad = dataclasses.replace(CFGS[1], test_users=(99,))
    with pytest.raises(UsageError, match=r"--test-users \[99\] are not in the data"):
        train_stacks([long, bad], windows, [tmp_path / "long", tmp_path / "bad"], workers=2, echo=lambda s: None)
    assert mp.active_children() == []
    assert not (tmp_path / "bad").exists()  # the failing model wrote nothing
    # Every folder is checked before any process starts.
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "last.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="already holds a training run"):
        train_stacks([CFGS[0], CFGS[1]], windows, [tmp_path / "free", tmp_path / "taken"], workers=2)
    assert not (tmp_path / "free").exists()

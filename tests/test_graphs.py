"""The CUDA-graph training step: used only where it can run, falls back exactly, resumes anywhere.

On CPU these check the parts a GPU relies on without one: the fallback after a failed
capture (one warning line, then bit-identical to plain eager steps), the optimizer flags a
graphed run saves (tensor learning rates, ``capturable``) resuming on CPU bit-exactly, and
the manifest's record of how the steps ran. The tests marked ``gpu`` capture and replay
for real and skip without CUDA.
"""
from __future__ import annotations

import copy

import pytest
import torch
from test_train import FAST, assert_same_tensors, history_without_timing, synthetic_arrays, windows_folder

from har_vit.core.checkpoint import load_checkpoint, save_checkpoint
from har_vit.core.io import read_manifest
from har_vit.model import create_model
from har_vit.stages.train import TrainConfig, run
from har_vit.training.augment import AugmentConfig, Augmenter
from har_vit.training.graphs import GraphedStep, graphed_step_or_none, make_capturable, make_plain
from har_vit.training.loop import build_optimizer, build_scheduler, make_loss, train_step
from har_vit.training.objective import Objective

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    return windows_folder(tmp_path_factory.mktemp("data"), synthetic_arrays())


def parts(cfg: TrainConfig, device: torch.device, seed: int = 0):
    """A tiny model with dropout and drop-path, its optimizer and schedule, and an augmenting loss."""
    torch.manual_seed(seed)
    model = create_model("tiny", window=16, channels=3, num_classes=3, drop=0.3, drop_path=0.3).to(device)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=4)
    aug = Augmenter(AugmentConfig(rotate=15.0, scale=0.1, jitter=0.05, time_warp=0.1), 3,
                    norm={"mean": [0.0] * 3, "std": [1.0] * 3})
    gen = torch.Generator(device=device).manual_seed(seed)
    loss_fn = Objective(cfg.label_smoothing, None, aug, gen)
    return model, optimizer, scheduler, loss_fn


def batches(device: torch.device, n: int = 6, B: int = 8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(B, 16, 3, generator=g).to(device), torch.randint(0, 3, (B,), generator=g).to(device))
            for _ in range(n)]


def test_only_one_cuda_process_without_compile_gets_a_graph():
    model, optimizer, _, loss_fn = parts(TrainConfig(**FAST), CPU)
    assert graphed_step_or_none(model, optimizer, loss_fn, CPU, wanted=True, distributed=False, compiled=False) is None
    cuda = torch.device("cuda")
    for wanted, dist, compiled in ((False, False, False), (True, True, False), (True, False, True)):
        assert graphed_step_or_none(model, optimizer, loss_fn, cuda, wanted, dist, compiled) is None


def test_a_failed_capture_warns_once_then_trains_exactly_as_eager_steps():
    # On a CPU the capture itself fails, which is the path a GPU takes when an op cannot be captured.
    cfg = TrainConfig(**FAST)
    plain = parts(cfg, CPU)
    graphed = parts(cfg, CPU)
    lines: list[str] = []
    # Two warm-up steps (eager on a CPU) first: the schedule has moved when the capture is tried.
    step = GraphedStep(graphed[0], graphed[1], graphed[3], CPU, warmup=2, warn=lines.append)
    for xb, yb in batches(CPU):
        torch.manual_seed(7)  # dropout draws from the global generator: the same draws on both sides
        a = train_step(plain[0], plain[1], plain[2], plain[3], xb, yb, CPU)
        torch.manual_seed(7)
        b = step(graphed[0], graphed[1], graphed[2], graphed[3], xb, yb, CPU)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(lines) == 1 and "CUDA graph capture failed" in lines[0] and lines[0].endswith("training eagerly")
    assert step.status.startswith("eager: ")
    assert_same_tensors(plain[0].state_dict(), graphed[0].state_dict())
    assert_same_tensors(plain[1].state_dict(), graphed[1].state_dict())  # float lrs, capturable off again
    assert plain[2].state_dict() == graphed[2].state_dict()


def test_make_plain_undoes_make_capturable():
    cfg = TrainConfig(**FAST)
    model, optimizer, scheduler, loss_fn = parts(cfg, CPU)
    for xb, yb in batches(CPU, n=2):  # optimizer state and a moved schedule to carry over
        train_step(model, optimizer, scheduler, loss_fn, xb, yb, CPU)
    before = copy.deepcopy(optimizer.state_dict())
    lrs = make_capturable(optimizer, CPU)
    assert all(isinstance(g["lr"], torch.Tensor) and g["lr"].dtype == torch.float32 and g["capturable"]
               for g in optimizer.param_groups)
    make_plain(optimizer, lrs)
    assert_same_tensors(optimizer.state_dict(), before)
    assert all(type(g["lr"]) is float for g in optimizer.param_groups)


def test_a_checkpoint_with_a_graphed_runs_optimizer_state_resumes_exactly(windows, tmp_path):
    # A graphed CUDA run saves capturable groups with tensor learning rates (and the schedule
    # keeps tensors as its last learning rates); restore turns them back into floats, and the
    # run goes on exactly (float64 tensors here, so that no rounding hides a difference).
    cfg = TrainConfig(epochs=2, **FAST)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(cfg, windows, whole)
    run(cfg, windows, cut, stop_after=1)
    ckpt = load_checkpoint(cut / "last.pt")
    for g in ckpt["optimizer"]["param_groups"]:
        g["lr"], g["capturable"] = torch.tensor(g["lr"], dtype=torch.float64), True
    ckpt["scheduler"]["_last_lr"] = [torch.tensor(v, dtype=torch.float64) for v in ckpt["scheduler"]["_last_lr"]]
    save_checkpoint(cut / "last.pt", ckpt)
    run(cfg, windows, cut, resume=True)
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(cut / "last.pt")
    for key in ("model", "optimizer", "scheduler", "best", "epoch"):
        assert_same_tensors(a[key], b[key], key)
    assert history_without_timing(whole) == history_without_timing(cut)


def test_the_manifest_says_how_the_steps_ran(windows, tmp_path):
    run(TrainConfig(epochs=1, **FAST), windows, tmp_path / "run")
    assert read_manifest(tmp_path / "run", "train")["training_step"] == "eager"


# --- on a GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_replayed_steps_follow_eager_steps_and_the_schedule():
    # No dropout, drop-path or augmentation: then a replay runs the eager step's kernels on the
    # same numbers, and the learning rate the schedule writes between replays must be the one used.
    dev = torch.device("cuda")
    cfg = TrainConfig(**{**FAST, "device": "cuda", "lr": 3e-3})
    torch.manual_seed(0)
    model = create_model("tiny", window=16, channels=3, num_classes=3, drop=0.0, drop_path=0.0).to(dev)
    twin = copy.deepcopy(model)
    opt_a, opt_b = build_optimizer(model, cfg, dev), build_optimizer(twin, cfg, dev)
    sch_a, sch_b = build_scheduler(opt_a, cfg, 4), build_scheduler(opt_b, cfg, 4)
    loss_fn = make_loss(cfg, None)
    step = GraphedStep(twin, opt_b, loss_fn, dev, warmup=2)
    for xb, yb in batches(dev, n=12):
        a = train_step(model, opt_a, sch_a, loss_fn, xb, yb, dev)
        b = step(twin, opt_b, sch_b, loss_fn, xb, yb, dev)
        torch.testing.assert_close(b[0], a[0], rtol=1e-3, atol=1e-4)
    assert step.status == "replayed"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[k], v, rtol=1e-3, atol=1e-4)
    assert float(opt_b.param_groups[0]["lr"]) == pytest.approx(opt_a.param_groups[0]["lr"], rel=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_run_replays_a_graph_and_resumes(windows, tmp_path):
    cfg = TrainConfig(epochs=3, **{**FAST, "device": "cuda", "threads": None})
    run(cfg, windows, tmp_path / "run", stop_after=2)
    manifest = run(cfg, windows, tmp_path / "run", resume=True)
    assert manifest["training_step"] == "cuda graph" and manifest["epochs_run"] == 3

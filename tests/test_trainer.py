"""Tests for medssl.ssl.trainer / sampler / schedules with a toy SSL method (no real methods needed)."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medssl.ssl.sampler import ResumableRandomSampler, make_loader
from medssl.ssl.schedules import cosine_schedule, warmup_cosine
from medssl.ssl.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


class ToyDataset(Dataset):
    """32 fixed 8-dim vectors."""

    def __init__(self, n: int = 32, dim: int = 8) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        # random augmentation in the dataset itself: must be re-derived on resume
        return {"image": self.x[i] + 0.1 * torch.randn(self.x.shape[1])}


def toy_collate(samples: list[dict]) -> dict:
    """Stack and draw a random mask with the global torch RNG (as a MaskCollator would)."""
    image = torch.stack([s["image"] for s in samples])
    mask = (torch.rand(image.shape) < 0.5).float()
    return {"image": image, "mask": mask}


class ToyMethod(nn.Module):
    """Masked reconstruction with dropout and an EMA target (like the real SSL methods)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, dim))
        self.target = copy.deepcopy(self.encoder)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.on_step_end_calls: list[tuple[int, int]] = []

    def forward(self, batch: dict) -> dict:
        x, m = batch["image"], batch["mask"]
        pred = self.encoder(x * m)
        with torch.no_grad():
            tgt = self.target(x)
        loss = ((pred - tgt) ** 2 * (1 - m)).mean() + ((pred - x) ** 2).mean()
        return {"loss": loss, "mask_ratio": m.mean().detach(), "pred_std": pred.detach().std()}

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        self.on_step_end_calls.append((step, max_steps))
        mom = cosine_schedule(0.9, 1.0, step, max_steps)
        for pt, po in zip(self.target.parameters(), self.encoder.parameters(), strict=True):
            pt.mul_(mom).add_(po.detach(), alpha=1 - mom)

    def images(self, batch: dict) -> dict:
        x = batch["image"][:2]
        return {"input": ((x - x.min()) / (x.max() - x.min() + 1e-8))[None]}  # 1 x 2 x dim (CHW)


def _make(out: Path, max_steps: int, ckpt_every: int, num_workers: int = 0, **kw) -> Trainer:
    torch.manual_seed(0)
    method = ToyMethod()
    loader = make_loader(ToyDataset(), batch_size=5, collate_fn=toy_collate, num_workers=num_workers, seed=7)
    opt = partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.05)
    return Trainer(
        method,
        loader,
        opt,
        max_steps=max_steps,
        output_dir=out,
        ckpt_every=ckpt_every,
        log_every=3,
        seed=11,
        device="cpu",
        progress=False,
        warmup_steps=3,
        **kw,
    )


def test_schedules():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert warmup_cosine(100, 100, 10, final_ratio=0.1) == pytest.approx(0.1)
    assert cosine_schedule(0.996, 1.0, 50, 100) == pytest.approx(0.998)


def test_sampler_resume_and_shards():
    s = ResumableRandomSampler(range(11), seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(11))
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(e1) == list(range(11))
    s.set_epoch(0, start=5)
    assert list(s) == e0[5:]
    shards = [list(ResumableRandomSampler(range(11), seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(shards[0]) | set(shards[1]) == set(range(11))
    state = s.state_dict()
    s2 = ResumableRandomSampler(range(11), seed=0)
    s2.load_state_dict(state)
    assert list(s2) == e0[5:]


def test_fit_logs_history_tensorboard_and_checkpoint(tmp_path):
    trainer = _make(tmp_path, max_steps=8, ckpt_every=4, image_every=4)
    before = copy.deepcopy(trainer.method.state_dict())
    hist = trainer.fit()
    after = trainer.method.state_dict()
    assert not torch.equal(before["encoder.0.weight"], after["encoder.0.weight"])
    assert not torch.equal(before["target.0.weight"], after["target.0.weight"])  # EMA moved
    assert hist["step"] == list(range(1, 9))
    assert len(hist["loss"]) == 8 and all(math.isfinite(v) for v in hist["loss"])
    assert len(hist["mask_ratio"]) == 8 and len(hist["pred_std"]) == 8
    assert hist["lr"][0] == pytest.approx(1e-2 / 3)  # warm-up 1/3
    assert hist["log_step"] == [3, 6] and all(v > 0 for v in hist["samples_per_s"])
    assert trainer.method.on_step_end_calls == [(s, 8) for s in range(1, 9)]
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert on_disk["loss"] == hist["loss"]
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name != "last.pt"]  # no temp left over
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/mask_ratio", "perf/samples_per_s"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))
    assert "images/input" in tags["images"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_matches_uninterrupted_run(tmp_path, num_workers):
    # 32 samples / batch 5 (drop_last) = 6 batches per epoch: K=14 crosses epochs, K/2=7 is mid-epoch
    full = _make(tmp_path / "full", max_steps=14, ckpt_every=7, num_workers=num_workers).fit()
    first = _make(tmp_path / "split", max_steps=14, ckpt_every=7, num_workers=num_workers)
    first.fit(stop_at_step=7)  # "killed" right after the step-7 checkpoint
    assert first.step == 7
    # a fresh process state: perturb the global RNG to show it is restored from the checkpoint
    torch.manual_seed(999)
    second = _make(tmp_path / "split", max_steps=14, ckpt_every=7, num_workers=num_workers)
    resumed = second.fit(resume=True)
    assert resumed["step"] == full["step"]
    assert resumed["loss"] == full["loss"]  # bit-identical on CPU
    assert resumed["lr"] == full["lr"]
    full_sd = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["method"]
    for k, v in second.method.state_dict().items():
        assert torch.equal(v, full_sd[k]), k


def test_resume_true_without_checkpoint_starts_fresh(tmp_path):
    hist = _make(tmp_path, max_steps=2, ckpt_every=0).fit(resume=True)
    assert hist["step"] == [1, 2]


def test_rejects_bad_method_output(tmp_path):
    class NoLoss(ToyMethod):
        def forward(self, batch):
            return {"not_loss": super().forward(batch)["loss"]}

    loader = make_loader(ToyDataset(), batch_size=4, collate_fn=toy_collate)
    tr = Trainer(
        NoLoss(),
        loader,
        partial(torch.optim.SGD, lr=0.1),
        max_steps=1,
        output_dir=tmp_path,
        device="cpu",
        progress=False,
    )
    with pytest.raises(TypeError, match="'loss'"):
        tr.fit()


def test_nan_loss_stops(tmp_path):
    class NaNMethod(ToyMethod):
        def forward(self, batch):
            out = super().forward(batch)
            out["loss"] = out["loss"] * float("nan")
            return out

    loader = make_loader(ToyDataset(), batch_size=4, collate_fn=toy_collate)
    tr = Trainer(
        NaNMethod(),
        loader,
        partial(torch.optim.SGD, lr=0.1),
        max_steps=5,
        output_dir=tmp_path,
        log_every=1,
        device="cpu",
        progress=False,
    )
    with pytest.raises(FloatingPointError, match="step 1"):
        tr.fit()


def test_plain_dataloader_and_optimizer_instance(tmp_path):
    torch.manual_seed(0)
    method = ToyMethod()
    ds = ToyDataset()
    loader = DataLoader(ds, batch_size=8, sampler=ResumableRandomSampler(ds, seed=1), collate_fn=toy_collate)
    opt = torch.optim.SGD(method.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    tr = Trainer(
        method,
        loader,
        opt,
        max_steps=6,
        output_dir=tmp_path,
        lr_scheduler=sched,
        ckpt_every=0,
        grad_clip=1.0,
        device="cpu",
        progress=False,
    )
    hist = tr.fit()
    assert hist["lr"] == [0.05] * 6
    assert len(hist["grad_norm"]) == 6
    assert tr.epoch == 1 and tr.batch_in_epoch == 2  # 4 batches per epoch


def test_from_monai_bundle_config(tmp_path):
    from monai.bundle import ConfigParser

    config = {
        "imports": ["$import torch", f"$import {__name__}"],
        "output_dir": str(tmp_path / "bundle_run"),
        "method": {"_target_": f"{__name__}.ToyMethod", "dim": 8},
        "dataset": {"_target_": f"{__name__}.ToyDataset", "n": 20},
        "loader": {
            "_target_": "medssl.ssl.sampler.make_loader",
            "dataset": "@dataset",
            "batch_size": 4,
            "collate_fn": f"${__name__}.toy_collate",
            "seed": 3,
        },
        "optimizer": {"_target_": "torch.optim.AdamW", "_mode_": "callable", "lr": 0.001},
        "trainer": {
            "_target_": "medssl.ssl.trainer.Trainer",
            "method": "@method",
            "train_loader": "@loader",
            "optimizer": "@optimizer",
            "max_steps": 3,
            "output_dir": "@output_dir",
            "ckpt_every": 2,
            "log_every": 1,
            "device": "cpu",
            "progress": False,
        },
        "run": "$@trainer.fit()",
    }
    parser = ConfigParser(config)
    parser.parse()
    hist = parser.get_parsed_content("run")
    assert hist["step"] == [1, 2, 3]
    assert (tmp_path / "bundle_run" / "checkpoints" / "last.pt").is_file()


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from test_trainer import _make

    out, max_steps = Path(sys.argv[1]), int(sys.argv[2])
    trainer = _make(out, max_steps=max_steps, ckpt_every=4)
    orig = trainer.save_checkpoint

    def save_then_wait(path=None):
        p = orig(path)
        print("CKPT", trainer.step, flush=True)
        if trainer.step == 4:
            time.sleep(60)  # the parent kills us here
        return p

    trainer.save_checkpoint = save_then_wait
    trainer.fit(resume=True)
    print("DONE", flush=True)
    """
)


def test_sigkill_then_resume_matches(tmp_path):
    script = tmp_path / "run_kill.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests")))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), "10"], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "CKPT 4", line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    hist_file = json.loads((out / "history.json").read_text())
    assert hist_file["step"][-1] == 4
    resumed = _make(out, max_steps=10, ckpt_every=4).fit(resume=True)
    full = _make(tmp_path / "full", max_steps=10, ckpt_every=4).fit()
    assert resumed["loss"] == full["loss"]


def test_default_schedule_in_history(tmp_path):
    tr = _make(tmp_path, max_steps=10, ckpt_every=0)
    hist = tr.fit()
    expected = [1e-2 * warmup_cosine(s, 10, 3) for s in range(10)]
    assert hist["lr"] == pytest.approx(expected)


def test_non_resumable_loader_warns_and_restarts_epoch(tmp_path):
    ds = ToyDataset()
    batches = [toy_collate([ds[i] for i in range(j, j + 4)]) for j in range(0, 16, 4)]  # 4 per epoch
    torch.manual_seed(0)
    Trainer(
        ToyMethod(),
        batches,
        partial(torch.optim.SGD, lr=0.01),
        max_steps=6,
        output_dir=tmp_path,
        ckpt_every=2,
        device="cpu",
        progress=False,
    ).fit(stop_at_step=2)
    tr = Trainer(
        ToyMethod(),
        batches,
        partial(torch.optim.SGD, lr=0.01),
        max_steps=6,
        output_dir=tmp_path,
        ckpt_every=2,
        device="cpu",
        progress=False,
    )
    with pytest.warns(UserWarning, match="cannot start mid-epoch"):
        hist = tr.fit(resume=True)
    assert hist["step"] == [1, 2, 3, 4, 5, 6]


def test_bf16_on_cpu_warns_and_trains_in_float32(tmp_path):
    with pytest.warns(UserWarning, match="only used on CUDA"):
        tr = _make(tmp_path, max_steps=1, ckpt_every=0, precision="bf16")
    assert not tr.use_bf16 and tr.device.type == "cpu"
    tr.fit()
    assert all(p.dtype == torch.float32 for p in tr.method.parameters())


def test_argument_errors(tmp_path):
    loader = make_loader(ToyDataset(), batch_size=4, collate_fn=toy_collate)
    opt = partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="max_steps"):
        Trainer(ToyMethod(), loader, opt, max_steps=0, output_dir=tmp_path)
    with pytest.raises(TypeError, match="optimizer"):
        Trainer(ToyMethod(), loader, "adam", max_steps=1, output_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no batch"):
        make_loader(ToyDataset(n=3), batch_size=4, collate_fn=toy_collate)


def test_make_loader_stream_is_independent_of_workers_and_leaves_main_rng_alone():
    def epoch(nw: int, ep: int, start: int = 0) -> list[dict]:
        loader = make_loader(ToyDataset(), batch_size=5, collate_fn=toy_collate, num_workers=nw, seed=7)
        loader.batch_sampler.set_epoch(ep, start)
        return list(loader)

    torch.manual_seed(42)
    before = torch.get_rng_state()
    e0 = epoch(0, 0)
    assert torch.equal(torch.get_rng_state(), before)  # collate's torch.rand ran in a forked RNG
    e0w = epoch(2, 0)
    assert len(e0) == len(e0w) == 6
    for a, b in zip(e0, e0w, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(e0[0]["mask"], e0[1]["mask"])  # fresh randomness per batch
    e1 = epoch(0, 1)
    assert not torch.equal(e0[0]["image"], e1[0]["image"])  # new order / augmentation per epoch
    tail = epoch(0, 0, start=3)
    assert all(torch.equal(a["mask"], b["mask"]) for a, b in zip(e0[3:], tail, strict=True))


def test_image_logging_shapes_and_failures(tmp_path):
    class Imgs(ToyMethod):
        def images(self, batch):
            return {"two_ch": torch.rand(2, 4, 4), "none": None, "nchw": torch.rand(2, 1, 4, 4), "hw": torch.rand(4, 4)}

    class Broken(ToyMethod):
        def images(self, batch):
            raise RuntimeError("no preview")

    loader = make_loader(ToyDataset(), batch_size=4, collate_fn=toy_collate)
    opt = partial(torch.optim.SGD, lr=0.01)
    Trainer(
        Imgs(), loader, opt, max_steps=2, output_dir=tmp_path / "a", image_every=1, device="cpu", progress=False
    ).fit()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "a" / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert {"images/two_ch", "images/hw"} <= set(acc.Tags()["images"])
    assert any(t.startswith("images/nchw") for t in acc.Tags()["images"])
    tr = Trainer(
        Broken(), loader, opt, max_steps=3, output_dir=tmp_path / "b", image_every=1, device="cpu", progress=False
    )
    with pytest.warns(UserWarning, match="no preview"):
        hist = tr.fit()
    assert hist["step"] == [1, 2, 3] and tr.image_every == 0

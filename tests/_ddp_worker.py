"""Worker for tests/test_ddp.py, run as ``python -m torch.distributed.run --nproc_per_node=2 ... OUT STEPS``.

Each rank trains a toy SSL method (dropout + EMA target) with gloo on CPU, then saves its method state dict,
history and the list of files it wrote into ``OUT/rank{r}.pt``. Output dir per rank: ``OUT/run{r}``, so the
test can check that rank 1 wrote nothing there.
"""

from __future__ import annotations

import copy
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from medssl.ssl.distributed import cleanup_distributed, get_rank
from medssl.ssl.sampler import make_loader
from medssl.ssl.trainer import Trainer


class Data(Dataset):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(6, generator=g) + 0.1 * torch.randn(6)}


def collate(samples: list[dict]) -> dict:
    image = torch.stack([s["image"] for s in samples])
    return {"image": image, "mask": (torch.rand(image.shape) < 0.5).float()}


class Method(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.1), nn.Linear(12, 6))
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)

    def forward(self, batch: dict) -> dict:
        x, m = batch["image"], batch["mask"]
        pred = self.encoder(x * m)
        with torch.no_grad():
            tgt = self.target(x)
        return {"loss": ((pred - tgt) ** 2).mean() + ((pred - x) ** 2).mean(), "m": m.mean()}

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        for pt, po in zip(self.target.parameters(), self.encoder.parameters(), strict=True):
            pt.mul_(0.9).add_(po, alpha=0.1)


def _trainer(out: Path, max_steps: int) -> Trainer:
    torch.manual_seed(100 + get_rank())  # different initial weights per rank: DDP must broadcast rank 0's
    loader = make_loader(Data(), batch_size=3, collate_fn=collate, seed=5)
    return Trainer(
        Method(),
        loader,
        partial(torch.optim.AdamW, lr=1e-2),
        max_steps=max_steps,
        output_dir=out,
        ckpt_every=2,
        log_every=1,
        device="cpu",
        seed=1,
        progress=False,
    )


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    rank = get_rank()
    # the run under test: interrupted after `steps` steps, then resumed to steps + 2
    run_dir = out / f"run{rank}"
    first = _trainer(run_dir, steps + 2)
    first.fit(stop_at_step=steps)
    written = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) if run_dir.exists() else []
    state_after_first = {k: v.clone() for k, v in first.method.state_dict().items()}
    # resume: rank 0 decides and every rank loads rank 0's checkpoint (run0/ here)
    second = _trainer(out / "run0", steps + 2)
    resumed = second.fit(resume=True)
    # the same run without interruption
    full = _trainer(out / f"full{rank}", steps + 2).fit()
    indices = first.train_loader.batch_sampler.sampler.indices(0)
    torch.save(
        {
            "state": state_after_first,
            "final_state": second.method.state_dict(),
            "history": resumed,
            "full_history": full,
            "written": written,
            "world_size": first.world_size,
            "indices": indices,
        },
        out / f"rank{rank}.pt",
    )
    cleanup_distributed()


if __name__ == "__main__":
    main()

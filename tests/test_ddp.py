"""DDP with gloo on CPU through torchrun: identical weights on every rank, rank 0 alone writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_ddp_two_ranks_identical_weights(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "tests" / "_ddp_worker.py"),
        str(tmp_path),
        "4",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    # ranks see disjoint halves of the data
    assert not set(r0["indices"]) & set(r1["indices"])
    assert set(r0["indices"]) | set(r1["indices"]) == set(range(24))
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # online and EMA target weights
        assert torch.equal(r0["final_state"][k], r1["final_state"][k]), k
    # rank 1 wrote no log, history or checkpoint; rank 0 wrote them all
    assert r1["written"] == []
    assert "checkpoints/last.pt" in r0["written"] and "history.json" in r0["written"]
    assert any(w.startswith("tb/") for w in r0["written"])
    assert not (tmp_path / "full1").exists()
    ckpt = torch.load(tmp_path / "run0" / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2  # the RNG state of each rank
    # the logged loss is the mean over ranks (same history on both), and the interrupted-and-resumed
    # run matches the uninterrupted one exactly
    assert r0["history"]["step"] == [1, 2, 3, 4, 5, 6]
    assert r0["history"]["loss"] == r1["history"]["loss"] == r0["full_history"]["loss"]
    for k in ckpt["method"]:
        assert torch.equal(ckpt["method"][k], r0["final_state"][k]), k

"""Checkpoint writing (atomic) and loading (weights_only; every failure is a CheckpointError)."""

from __future__ import annotations

import collections
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medssl.errors import CheckpointError, InputError
from medssl.ssl.checkpoint import (
    atomic_write,
    atomic_write_json,
    get_rng_state,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    set_rng_state,
)
from medssl.ssl.trainer import Trainer


def _good(tmp_path):
    path = tmp_path / "ok.pt"
    save_checkpoint(path, {"step": 3, "method": {"w": torch.ones(2)}, "optimizer": {}})
    return path


def test_roundtrip(tmp_path):
    ckpt = load_checkpoint(_good(tmp_path))
    assert ckpt["step"] == 3 and torch.equal(ckpt["method"]["w"], torch.ones(2))
    assert ckpt["format"] == "medssl-checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ok.pt"]


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert isinstance(info.value, InputError) and info.value.path.endswith("nope.pt")
    assert "\n" not in str(info.value)


def test_truncated(tmp_path):
    path = _good(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(path)


def test_random_bytes_and_empty(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_wrong_keys_and_types(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(1)}, plain)  # a bare state dict, not a medssl checkpoint
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(plain)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(tensor)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "version": 1, "step": 0, "method": {}}, other)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(other)
    future = tmp_path / "future.pt"
    torch.save({"format": "medssl-checkpoint", "version": 99, "step": 0, "method": {}}, future)
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(future)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_arbitrary_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "medssl-checkpoint", "version": 1, "step": 0, "method": {}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(collections.OrderedDict(a=Evil())))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"a": 1})

    def boom(fh):
        fh.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # the temp file was removed


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    import random

    state = get_rng_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    set_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_trainer_resume_rejects_mismatched_checkpoint(tmp_path):
    batches = [{"x": torch.randn(4, 3)} for _ in range(2)]

    class M(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.lin = nn.Linear(3, d)

        def forward(self, batch):
            return {"loss": self.lin(batch["x"]).pow(2).mean()}

    Trainer(
        M(2), batches, partial(torch.optim.SGD, lr=0.1), max_steps=2, output_dir=tmp_path, device="cpu", progress=False
    ).fit()
    other = Trainer(
        M(5), batches, partial(torch.optim.SGD, lr=0.1), max_steps=4, output_dir=tmp_path, device="cpu", progress=False
    )
    with pytest.raises(CheckpointError, match="does not match the method"):
        other.fit(resume=True)
    with pytest.raises(CheckpointError, match="not found"):
        other.fit(resume=tmp_path / "missing.pt")
    # a truncated last.pt is reported, not silently ignored
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        Trainer(
            M(2),
            batches,
            partial(torch.optim.SGD, lr=0.1),
            max_steps=4,
            output_dir=tmp_path,
            device="cpu",
            progress=False,
        ).fit(resume=True)


WRITER = textwrap.dedent(
    """
    import sys
    import torch
    from medssl.ssl.checkpoint import save_checkpoint

    path = sys.argv[1]
    big = torch.zeros(4_000_000)  # 16 MB: each write takes a while
    i = 0
    while True:
        save_checkpoint(path, {"step": i, "method": {"w": big + i}})
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_during_writes_never_leaves_a_broken_checkpoint(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    path = tmp_path / "ckpt" / "last.pt"
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "0"  # one complete checkpoint exists
        time.sleep(0.3)  # somewhere in the middle of later writes
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = load_checkpoint(path)  # whatever the moment of the kill: a whole checkpoint
    assert torch.equal(ckpt["method"]["w"][:3], torch.full((3,), float(ckpt["step"])))
    remove_stale_temp_files(path.parent)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]

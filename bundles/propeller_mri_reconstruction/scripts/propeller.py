"""The bundle's thin module: study images and their fixed split, simulation, training, evaluation, inference.

Everything generic comes from medssl: the PROPELLER physics (:mod:`medssl.transforms.kspace`), operators,
coil maps, baselines, the unrolled network, the training methods and metrics (:mod:`medssl.mri`), the Trainer
and seeded loaders (:mod:`medssl.ssl`), results bookkeeping (:mod:`medssl.eval.results`) and the writers of
:mod:`medssl.io`.

Fixed split of the real images (``../shared/data``; every image is a real MR magnitude image):

- train: ``volumes/nifti/example4d.nii.gz`` volume 0, axial slices 4-19 (16 brain EPI slices, 128x96 padded to
  square), the 10 frames of ``mri/magnitude_images_dicom/emri_small.dcm``, and 128x128 crops of the sharp
  ``MR2_UNCR.dcm`` shoulder image at two scales (the 9 crops of its 256² version at stride 64, and the crops of
  its 512² version at stride 128 that are at least 30 % foreground);
- test: ``MR-SIEMENS-DICOM-WithOverlays.dcm`` (abdomen), ``MR_small.dcm`` (head) and ``example4d.nii.gz``
  volume 1 slices 1 and 22 (slices never used for training).

Without ``../shared/data`` (``data="samples"``) the shipped ``MR_small`` and its flips are used for a smoke run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.errors import InputError, MedsslError
from medssl.mri import (
    SENS_CENTRE_FRACTION,
    SSDU,
    BladeDataset,
    PropellerGeometry,
    PropellerOperator,
    ReadoutSplitSSL,
    SupervisedRecon,
    UnrolledRecon,
    birdcage_maps,
    cartesian_coil_images,
    cartesian_recon,
    cartesian_to_blades,
    cg_sense,
    denoise_magnitude,
    estimate_sample_sigma,
    estimate_sens_from_blades,
    estimate_snr,
    image_metrics,
    reconstruct,
    simulate_acquisition,
)
from medssl.ssl.checkpoint import atomic_write, atomic_write_json
from medssl.transforms.kspace import body_mask, normalise_magnitude

__all__ = [
    "TASK",
    "METHODS",
    "TRAINED",
    "default_data",
    "is_full_dataset",
    "study_images",
    "make_acquisitions",
    "with_estimated_sens",
    "build_network",
    "build_method",
    "train",
    "save_model",
    "load_model",
    "NoiseMatched",
    "load_noise_matched",
    "conventional",
    "evaluate",
    "pretrain",
    "measured_acquisitions",
    "read_kspace_case",
    "Inference",
]

TASK = "propeller_reconstruction"
METHODS = ("self_supervised", "ssdu", "supervised", "gridding", "gridding_denoise", "cg_sense", "cg_sense_denoise")
TRAINED = ("self_supervised", "ssdu", "supervised")
NET_DEFAULTS: dict[str, Any] = {"n_unrolls": 3, "cg_iters": 3, "channels": [32, 64, 128, 256]}

TRAIN_FILES = {"example4d": "volumes/nifti/example4d.nii.gz", "emri": "mri/magnitude_images_dicom/emri_small.dcm",
               "shoulder": "mri/magnitude_images_dicom/MR2_UNCR.dcm"}
TEST_FILES = {
    "abdomen": "mri/magnitude_images_dicom/MR-SIEMENS-DICOM-WithOverlays.dcm",
    "head": "mri/magnitude_images_dicom/MR_small.dcm",
}
TRAIN_SLICES = range(4, 20)
TEST_SLICES = (1, 22)


# ----------------------------------------------------------------------------------------------- data


def default_data(bundle_root: str | os.PathLike[str]) -> str:
    """``../shared/data`` beside the checkout when it holds the study images, else ``"samples"``."""
    shared = Path(bundle_root).resolve().parents[1].parent / "shared" / "data"
    return os.fspath(shared) if is_full_dataset(shared) else "samples"


def is_full_dataset(data: str | os.PathLike[str]) -> bool:
    """Whether ``data`` holds every file of the fixed split."""
    if os.fspath(data) == "samples":
        return False
    root = Path(data)
    return all((root / f).is_file() for f in (*TRAIN_FILES.values(), *TEST_FILES.values()))


def _slice_xy(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of an ``(x, y, z[, t])`` NIfTI array as ``(y, x)`` rows, superior up."""
    return np.flipud(np.asarray(vol[:, :, z]).T)


def study_images(
    data: str | os.PathLike[str], size: int
) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
    """The fixed ``(train, test)`` split as lists of ``(name, magnitude [size, size] in [0, 1])``."""
    from medssl.io import load

    if os.fspath(data) == "samples" or not is_full_dataset(data):
        from medssl import samples

        img = np.asarray(load(samples.mr_small()).array, np.float32)
        train = [(f"mr_small_{k}", normalise_magnitude(np.rot90(img, k), size)) for k in (1, 2, 3)]
        train.append(("mr_small_flip", normalise_magnitude(img[:, ::-1], size)))
        return train, [("mr_small", normalise_magnitude(img, size))]
    root = Path(data)
    train: list[tuple[str, torch.Tensor]] = []
    vol = np.asarray(load(root / TRAIN_FILES["example4d"]).array, np.float32)
    for z in TRAIN_SLICES:
        train.append((f"example4d_v0_z{z}", normalise_magnitude(_slice_xy(vol[..., 0], z), size)))
    emri = np.asarray(load(root / TRAIN_FILES["emri"]).array, np.float32)
    for i in range(emri.shape[0]):
        train.append((f"emri_f{i}", normalise_magnitude(emri[i], size)))
    shoulder = np.asarray(load(root / TRAIN_FILES["shoulder"]).array, np.float32)
    for scale, stride, min_fg in ((2, 1, 0.0), (4, 2, 0.3)):  # crops of the 2x / 4x size version
        big = normalise_magnitude(shoulder, scale * size)
        step = size // 2 * stride
        for i in range(0, scale * size - size + 1, step):
            for j in range(0, scale * size - size + 1, step):
                crop = big[i : i + size, j : j + size]
                if float((crop > 0.1).float().mean()) >= min_fg:
                    train.append((f"shoulder_x{scale}_{i}_{j}", normalise_magnitude(crop.numpy(), size)))
    test: list[tuple[str, torch.Tensor]] = []
    for name, rel in TEST_FILES.items():
        test.append((name, normalise_magnitude(np.asarray(load(root / rel).array, np.float32), size)))
    for z in TEST_SLICES:
        test.append((f"example4d_v1_z{z}", normalise_magnitude(_slice_xy(vol[..., 1], z), size)))
    return train, test


def make_acquisitions(
    images: Sequence[tuple[str, torch.Tensor]], geometry: PropellerGeometry, snrs: Sequence[float], seed: int,
    n_coils: int = 8,
) -> list[dict[str, Any]]:
    """One simulated noisy acquisition per image and SNR (phase and noise drawn from ``seed``)."""
    sens = birdcage_maps(n_coils, geometry.im_size)
    op = PropellerOperator(geometry.trajectory(), geometry.im_size, sens, normalise_dcf=False, toeplitz=False)
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for snr in snrs:
        for name, mag in images:
            acq = simulate_acquisition(mag, geometry, sens, snr, generator=g, op=op)
            acq.update({"name": name, "snr": float(snr)})
            out.append(acq)
    return out


def with_estimated_sens(acqs: Sequence[dict[str, Any]], geometry: PropellerGeometry, blades: torch.Tensor,
                        centre_fraction: float = SENS_CENTRE_FRACTION) -> list[dict[str, Any]]:
    """Copies of ``acqs`` whose ``sens`` are estimated from the centres of ``blades``, as measured data has them.

    ``centre_fraction``: the k-space radius the maps are estimated from, as a fraction of ``pi``
    (:func:`medssl.mri.estimate_sens_from_blades`; the default is what inference uses).
    """
    op = PropellerOperator(geometry.trajectory(blades), geometry.im_size, None)
    return [{**a, "sens": estimate_sens_from_blades(op, a["kspace"][:, blades].reshape(a["kspace"].shape[0], -1),
                                                    centre_fraction=centre_fraction)}
            for a in acqs]


# ----------------------------------------------------------------------------------------------- models


def build_network(**overrides: Any) -> UnrolledRecon:
    """The unrolled network with the bundle's defaults, overridden by ``overrides``.

    Keys: ``n_unrolls``, ``cg_iters``, ``channels``, ``kspace_support``, ``final_denoise``.
    """
    cfg = {**NET_DEFAULTS, **overrides}
    return UnrolledRecon(n_unrolls=int(cfg["n_unrolls"]), cg_iters=int(cfg["cg_iters"]),
                         channels=tuple(cfg["channels"]), kspace_support=bool(cfg.get("kspace_support", True)),
                         final_denoise=bool(cfg.get("final_denoise", True)))


def build_method(method: str, network: UnrolledRecon, geometry: PropellerGeometry, blades: torch.Tensor,
                 seed: int = 0, split: str = "interleaved", augment: bool = False,
                 coords: torch.Tensor | None = None) -> torch.nn.Module:
    """The training objective ``method`` over the blades in use (``augment``: random exact rotations / flips).

    ``coords`` ``[blades, lines, readout, 2]``: measured sample positions of all blades (default: the standard
    blade pattern of ``geometry``).
    """
    used = geometry.coordinates(blades) if coords is None else coords[torch.as_tensor(blades, dtype=torch.long)]
    traj = used.reshape(-1, 2).T.contiguous()
    shape = geometry.sample_shape(len(blades))
    if method == "self_supervised":
        return ReadoutSplitSSL(network, traj, shape, geometry.im_size, mode=split, augment=augment)
    if method == "ssdu":
        return SSDU(network, traj, shape, geometry.im_size, coords=used, rho=0.4, seed=seed, augment=augment)
    if method == "supervised":
        return SupervisedRecon(network, traj, geometry.im_size, augment=augment)
    raise ValueError(f"unknown trained method {method!r}; one of {TRAINED}")


def train(
    method: torch.nn.Module, dataset: BladeDataset, output_dir: str | os.PathLike[str], max_steps: int,
    lr: float = 1e-3, batch_size: int = 1, seed: int = 0, device: str = "cpu", resume: bool = False,
) -> dict[str, list[float]]:
    """Train with the shared :class:`medssl.ssl.trainer.Trainer` (Adam, warm-up + cosine, grad clip 1)."""
    from torch.utils.data import default_collate

    from medssl.ssl.sampler import make_loader
    from medssl.ssl.trainer import Trainer

    loader = make_loader(dataset, batch_size=min(batch_size, len(dataset)), collate_fn=default_collate, seed=seed)
    trainer = Trainer(method, loader, lambda p: torch.optim.Adam(p, lr=lr), max_steps=max_steps,
                      output_dir=output_dir, ckpt_every=max_steps, log_every=10, device=device, seed=seed,
                      grad_clip=1.0, warmup_steps=max(1, max_steps // 20), progress=False)
    try:
        history = trainer.fit(resume=resume)
    finally:
        trainer.close()
    method.cpu()
    return {k: [float(v) for v in vals] for k, vals in history.items() if k == "loss"}


def save_model(path: str | os.PathLike[str], network: UnrolledRecon, info: dict[str, Any]) -> Path:
    """Write the network's state dict (``.pt``) and its settings (``.json`` beside it), atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    atomic_write(path, lambda fh: torch.save(state, fh))
    meta = {"network": {"n_unrolls": network.n_unrolls, "cg_iters": network.cg_iters,
                        "kspace_support": network.kspace_support, "final_denoise": network.final_denoise,
                        "channels": list(network.channels)}, **info}
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def load_model(path: str | os.PathLike[str], info: str | os.PathLike[str] | None = None) -> tuple[UnrolledRecon, dict]:
    """The network from a state dict (``weights_only=True``) and its settings JSON."""
    p = Path(path)
    if not p.is_file():
        raise MedsslError(f"{p}: model checkpoint not found (train it: medssl pretrain propeller_mri_reconstruction)")
    meta_path = Path(info) if info else p.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"network": NET_DEFAULTS}
    net = build_network(**meta.get("network", {}))
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - report as one line
        raise MedsslError(f"{p}: not a checkpoint of this network ({type(exc).__name__})") from None
    net.eval()
    return net, meta


class NoiseMatched:
    """Networks trained at different SNRs; every acquisition is reconstructed by the one nearest its own SNR.

    The SNR is estimated from the acquisition alone (:func:`medssl.mri.estimate_sample_sigma` on the outer
    readout samples, :func:`medssl.mri.estimate_snr` for the image-domain ratio) and matched on a log scale, so
    between networks trained at SNR 10 and 20 the switch is at 14.1.

    Args:
        networks: ``{training SNR: network}``.
        names: ``{training SNR: checkpoint name}`` for reports.
    """

    def __init__(self, networks: dict[float, UnrolledRecon], names: dict[float, str] | None = None) -> None:
        if not networks:
            raise ValueError("no networks")
        self.networks = {float(k): v for k, v in sorted(networks.items())}
        self.names = {float(k): str(v) for k, v in (names or {}).items()}

    @property
    def snrs(self) -> list[float]:
        """The training SNRs, ascending."""
        return list(self.networks)

    def choose(self, snr: float) -> float:
        """The training SNR nearest ``snr`` on a log scale (the lowest for ``snr <= 0``, the highest for inf)."""
        if not snr > 0:
            return self.snrs[0]
        if math.isinf(snr):
            return self.snrs[-1]
        return min(self.snrs, key=lambda s: abs(math.log(s) - math.log(snr)))

    @staticmethod
    def estimate(op: PropellerOperator, kspace: torch.Tensor, geometry: PropellerGeometry) -> float:
        """The SNR of blades ``kspace`` (``[C, n_used, n_lines, n_readout]``; ``op`` carries the coil maps)."""
        sigma = estimate_sample_sigma(kspace)
        return estimate_snr(op, kspace.reshape(1, kspace.shape[0], -1), sigma,
                            oversampling=geometry.n_readout / geometry.im_size)

    def select(self, op: PropellerOperator, kspace: torch.Tensor, geometry: PropellerGeometry
               ) -> tuple[UnrolledRecon, float, float]:
        """``(network, estimated SNR, its training SNR)`` for blades ``kspace`` (see :meth:`estimate`)."""
        est = self.estimate(op, kspace, geometry)
        snr = self.choose(est)
        return self.networks[snr], est, snr


def load_noise_matched(paths: Sequence[str | os.PathLike[str]]) -> NoiseMatched:
    """:class:`NoiseMatched` from checkpoints whose ``.json`` each names exactly one training SNR."""
    nets: dict[float, UnrolledRecon] = {}
    names: dict[float, str] = {}
    for path in paths:
        net, meta = load_model(path)
        snrs = meta.get("snrs") or []
        if len(snrs) != 1:
            raise MedsslError(f"{path}: a noise-matched network must be trained at one SNR; its .json lists "
                              f"{list(snrs) or 'none'}")
        snr = float(snrs[0])
        if snr in nets:
            raise MedsslError(f"{path}: a second network for SNR {snr:g} (the first: {names[snr]})")
        nets[snr], names[snr] = net, Path(path).name
    if not nets:
        raise MedsslError("no noise-matched checkpoints given")
    return NoiseMatched(nets, names)


# ----------------------------------------------------------------------------------------------- evaluation


def conventional(
    op: PropellerOperator, kspace: torch.Tensor, lam: float, n_iter: int, denoiser: str = "nlm", strength: float = 0.8,
    self_ensemble: bool = False,
) -> dict[str, np.ndarray]:
    """Gridding, CG-SENSE and each followed by the classic denoiser, as magnitude images.

    ``self_ensemble``: the same average over the 8 rotated / flipped views as the networks get (gridding and
    CG-SENSE are equivariant, so only the denoisers can gain), so that both sides have the same care.
    """
    if self_ensemble:
        from medssl.mri.methods import dihedral_average

        names = ("gridding", "gridding_denoise", "cg_sense", "cg_sense_denoise")

        def stacked(o: PropellerOperator, y: torch.Tensor) -> torch.Tensor:
            imgs = conventional(o, y, lam, n_iter, denoiser, strength)
            return torch.from_numpy(np.stack([np.asarray(imgs[k], np.float64) for k in names]))

        mean = dihedral_average(op, kspace, stacked).numpy()
        return dict(zip(names, mean, strict=True))
    grid = op.gridding(kspace).abs()[0].numpy()
    cg = cg_sense(op, kspace, lam=lam, n_iter=n_iter).abs()[0].numpy()
    return {"gridding": grid, "gridding_denoise": denoise_magnitude(grid, denoiser, strength),
            "cg_sense": cg, "cg_sense_denoise": denoise_magnitude(cg, denoiser, strength)}


def tune_conventional(
    acqs: Sequence[dict[str, Any]], geometry: PropellerGeometry, blades: torch.Tensor,
    lams: Sequence[float] = (0.0, 0.1, 0.3, 1.0, 3.0), iters: Sequence[int] = (3, 5, 10, 20),
    strengths: Sequence[float] = (0.6, 0.8, 1.0, 1.2, 1.5, 2.0), denoisers: Sequence[str] = ("nlm", "tv", "wavelet"),
) -> dict[str, Any]:
    """Choose CG-SENSE's ``lam`` / iterations and the denoiser by mean PSNR on (training) acquisitions."""
    op = PropellerOperator(geometry.trajectory(blades), geometry.im_size, acqs[0]["sens"])
    best: dict[str, Any] = {}
    scores: dict[tuple[float, int], float] = {}
    for lam in lams:
        for it in iters:
            vals = []
            for a in acqs:
                y = a["kspace"][:, blades].reshape(1, a["kspace"].shape[0], -1)
                x = cg_sense(op.with_sens(a["sens"]), y, lam=lam, n_iter=it).abs()[0]
                vals.append(image_metrics(x, a["magnitude"], a["mask"])["psnr"])
            scores[(lam, it)] = float(np.mean(vals))
    lam, it = max(scores, key=scores.get)
    best.update({"lam": lam, "n_iter": it, "cg_psnr": scores[(lam, it)]})
    den: dict[tuple[str, float], float] = {}
    cgs = []
    for a in acqs:
        y = a["kspace"][:, blades].reshape(1, a["kspace"].shape[0], -1)
        cgs.append((cg_sense(op.with_sens(a["sens"]), y, lam=lam, n_iter=it).abs()[0].numpy(), a))
    for d in denoisers:
        for s in strengths:
            den[(d, s)] = float(np.mean([image_metrics(denoise_magnitude(x, d, s), a["magnitude"], a["mask"])["psnr"]
                                         for x, a in cgs]))
    d, s = max(den, key=den.get)
    best.update({"denoiser": d, "strength": s, "denoise_psnr": den[(d, s)]})
    return best


def evaluate(
    acqs: Sequence[dict[str, Any]], geometry: PropellerGeometry, blades: torch.Tensor,
    networks: dict[str, UnrolledRecon | NoiseMatched] | None = None, conv: dict[str, Any] | None = None,
    keep_images: bool = False, estimated_sens: bool = False, self_ensemble: bool = False,
    sens_centre_fraction: float = SENS_CENTRE_FRACTION,
) -> dict[str, Any]:
    """Metrics of every method on ``acqs`` (per image), optionally the images themselves.

    A :class:`NoiseMatched` value reconstructs every acquisition with the network nearest its estimated SNR.
    ``estimated_sens``: every method uses coil maps estimated from the centres of the blades in use (as on
    measured data, :func:`medssl.mri.estimate_sens_from_blades`, from the k-space radius
    ``sens_centre_fraction`` x pi) instead of the simulation's true maps.
    ``self_ensemble``: every method averages its reconstructions of the 8 rotated / flipped views of each
    acquisition (:func:`medssl.mri.methods.reconstruct`, :func:`conventional`).

    Returns:
        ``{"metrics": {method: {metric: [value per acquisition]}}, "images": {method: [magnitude, ...]},
        "selection": {method: [(estimated SNR, chosen training SNR) per acquisition]}}`` (``selection`` only for
        noise-matched methods).
    """
    op = PropellerOperator(geometry.trajectory(blades), geometry.im_size, acqs[0]["sens"])
    metrics: dict[str, dict[str, list[float]]] = {}
    images: dict[str, list[np.ndarray]] = {}
    selection: dict[str, list[tuple[float, float]]] = {}

    def add(name: str, img: np.ndarray, a: dict[str, Any]) -> None:
        m = image_metrics(img, a["magnitude"], a["mask"])
        for k, v in m.items():
            metrics.setdefault(name, {}).setdefault(k, []).append(float(v))
        if keep_images:
            images.setdefault(name, []).append(img)

    for a in with_estimated_sens(acqs, geometry, blades, sens_centre_fraction) if estimated_sens else acqs:
        y = a["kspace"][:, blades].reshape(1, a["kspace"].shape[0], -1)
        o = op.with_sens(a["sens"])
        if conv is not None:
            imgs = conventional(o, y, conv["lam"], conv["n_iter"], conv["denoiser"], conv["strength"],
                                self_ensemble=self_ensemble)
            for name, img in imgs.items():
                add(name, img, a)
        for name, net in (networks or {}).items():
            if isinstance(net, NoiseMatched):
                net, est, chosen = net.select(o, a["kspace"][:, blades], geometry)
                selection.setdefault(name, []).append((est, chosen))
            with torch.no_grad():
                add(name, reconstruct(net, o, y, self_ensemble=self_ensemble).abs()[0].numpy(), a)
        if keep_images:
            images.setdefault("reference", []).append(a["magnitude"].numpy())
    out: dict[str, Any] = {"metrics": metrics, "images": images}
    if selection:
        out["selection"] = selection
    return out


# ----------------------------------------------------------------------------------------------- bundle workflows


def _flag(value: bool | str | int, name: str) -> bool:
    """A boolean option that may arrive as a string from the command line (``--augment false``)."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on", "dihedral"):
            return True
        if low in ("0", "false", "no", "off", "none", ""):
            return False
        raise MedsslError(f"{name}: expected true or false, got {value!r}")
    return bool(value)


KSPACE_SUFFIXES = (".npz", ".dat", ".h5", ".mrd", ".ismrmrd")


def measured_acquisitions(
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], blade_fraction: float = 1.0,
) -> tuple[list[dict[str, Any]], PropellerGeometry, torch.Tensor]:
    """Your own raw k-space as training acquisitions: every blade / Cartesian file in ``data`` (folder or files).

    All files must share one blade pattern (blades, lines, readout, matrix and angles), since the training
    objective is built on one trajectory; Cartesian files are resampled onto 16 blades as in inference. Coil maps
    come from the file (``sens``) or are estimated from the centres of the blades in use, as at inference. The
    SNR of each acquisition is estimated from its own samples (:func:`medssl.mri.estimate_snr`).

    Returns:
        ``(acquisitions [{"kspace", "sens", "snr"}], geometry, coordinates [blades, lines, readout, 2])``.

    Raises:
        InputError: naming the folder when it holds no k-space file, or the file that cannot be used or does not
            match the first file's blade pattern.
    """
    from medssl.transforms.kspace import propeller_coordinates

    items = [data] if isinstance(data, str | os.PathLike) else list(data)
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.name.lower().endswith(KSPACE_SUFFIXES)
                           and not p.name.startswith("."))
            if not found:
                raise InputError(item, f"no raw k-space files ({', '.join(KSPACE_SUFFIXES)}) to train on")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise InputError(item, "file or folder not found")
    acqs: list[dict[str, Any]] = []
    geometry: PropellerGeometry | None = None
    coords: torch.Tensor | None = None
    for path in paths:
        case = read_kspace_case(path)
        g: PropellerGeometry = case["geometry"]
        c = case["coords"]
        if c is None:
            c = propeller_coordinates(g.n_blades, g.n_lines, g.n_readout, g.im_size, case["angles"])
        if geometry is None:
            geometry, coords, first = g, c, path
        elif g != geometry or float((c - coords).abs().max()) > 1e-3:
            raise InputError(path, f"blade pattern {g.n_blades} x {g.n_lines} x {g.n_readout} at {g.im_size}² (or its "
                                   f"angles) differs from {first.name}'s {geometry.n_blades} x {geometry.n_lines} x "
                                   f"{geometry.n_readout} at {geometry.im_size}²; train on one protocol at a time")
        blades = g.blades(blade_fraction)
        op = PropellerOperator(c[blades].reshape(-1, 2).T.contiguous(), g.im_size, None)
        k = case["kspace"]
        y = k[:, blades].reshape(k.shape[0], -1)
        sens = case["sens"] if case["sens"] is not None else estimate_sens_from_blades(op, y)
        op = op.with_sens(sens)
        snr = NoiseMatched.estimate(op, k[:, blades], g)
        acqs.append({"kspace": k, "sens": sens, "snr": snr})
    assert geometry is not None and coords is not None
    return acqs, geometry, coords


def pretrain(
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str],
    method: str = "self_supervised",
    blade_fraction: float = 0.5, snrs: Sequence[float] = (10.0, 20.0), max_steps: int = 300, im_size: int = 128,
    n_blades: int = 16, n_lines: int = 12, n_coils: int = 8, lr: float = 1e-3, n_readout: int | None = None,
    batch_size: int = 1, seed: int = 0,
    device: str = "cpu", resume: bool = False, network: dict[str, Any] | None = None,
    train_limit: int | None = None, label_fraction: float = 1.0, init_checkpoint: str | None = None,
    evaluate_test: bool = False, augment: bool = False, coil_maps: str = "true",
) -> dict[str, Any]:
    """Train the network on the training images' simulated noisy blades; writes ``output_dir/model.pt``.

    Args:
        data: ``../shared/data`` (the fixed split: simulated blades of its images), ``"samples"`` (a smoke run on
            the shipped image), or your own raw k-space: a folder of blade ``.npz`` / ISMRMRD / twix files, or a
            list of files (:func:`measured_acquisitions`; self-supervised or SSDU only, geometry from the files,
            the network's SNR = the median of the estimated SNRs).
        output_dir: run folder (Trainer logs, ``model.pt`` + ``model.json``).
        method: ``self_supervised`` (readout split), ``ssdu`` or ``supervised`` (clean targets).
        blade_fraction: fraction of the blades used (every other blade at 0.5).
        snrs: SNRs of the simulated training acquisitions (one noisy acquisition per image and SNR).
        max_steps: optimisation steps.
        im_size: image matrix.
        n_blades: blades of the full acquisition.
        n_lines: lines per blade.
        n_coils: birdcage coils.
        lr: Adam learning rate.
        n_readout: readout samples (default ``2 * im_size``: 2x oversampled readout).
        batch_size: acquisitions per step.
        seed: seed of the network, the noise / phase draws and the data order.
        device: ``cpu``, ``cuda`` or ``auto``.
        resume: continue from ``output_dir/checkpoints/last.pt``.
        network: overrides of the network settings (``n_unrolls``, ``cg_iters``, ``channels``).
        train_limit: use only the first N training images.
        label_fraction: for ``supervised``: the fraction of training images whose clean image is used.
        init_checkpoint: start from these weights (e.g. the self-supervised model, for supervised fine-tuning).
        evaluate_test: also report the mean test PSNR of the trained network (at the first SNR).
        augment: show every step a random rotation / flip of its acquisition (exact in k-space, see
            :mod:`medssl.mri.methods`): 8 views of each noisy scan, no new data.
        coil_maps: for simulated training, ``"true"`` (the simulation's birdcage maps) or ``"estimated"`` (maps
            estimated from the centres of the blades in use, as inference and measured data have them).

    Returns:
        ``{"model": path, "loss_first", "loss_last", "seconds", "train_images"[, "test_psnr"]}``.
    """
    t0 = time.time()
    augment = _flag(augment, "augment")
    measured = isinstance(data, list | tuple) or not (os.fspath(data) == "samples" or is_full_dataset(data))
    coords = None
    if measured:  # the user's own raw k-space: no clean images, no simulation
        if method == "supervised":
            raise MedsslError("supervised training needs clean images; measured k-space has none "
                              "(use method self_supervised or ssdu)")
        acqs, geometry, coords = measured_acquisitions(data, blade_fraction)
        if batch_size > 1 and len({tuple(a["kspace"].shape) for a in acqs}) > 1:
            raise MedsslError("the files differ in coil count: train with batch_size 1")
        train_imgs, test_imgs = [], []
        snrs = [round(float(np.median([a["snr"] for a in acqs])), 1)]  # what load_noise_matched files it under
        n_coils = int(acqs[0]["kspace"].shape[0])
        evaluate_test = False
    else:
        geometry = PropellerGeometry(n_blades, n_lines, n_readout or 2 * im_size, im_size)
        train_imgs, test_imgs = study_images(data, im_size)
        if train_limit:
            train_imgs = train_imgs[: int(train_limit)]
        if method == "supervised" and label_fraction < 1.0:
            g = torch.Generator().manual_seed(seed)
            keep = max(1, int(round(label_fraction * len(train_imgs))))
            idx = sorted(torch.randperm(len(train_imgs), generator=g)[:keep].tolist())
            train_imgs = [train_imgs[i] for i in idx]
        acqs = make_acquisitions(train_imgs, geometry, snrs, seed=1000 + seed, n_coils=n_coils)
    torch.manual_seed(seed)
    blades = geometry.blades(blade_fraction)
    if coil_maps not in ("true", "estimated"):
        raise MedsslError(f"coil_maps must be 'true' or 'estimated', got {coil_maps!r}")
    if coil_maps == "estimated" and not measured:
        acqs = with_estimated_sens(acqs, geometry, blades)
    net = build_network(**(network or {}))
    if init_checkpoint:
        net, _ = load_model(init_checkpoint)
    m = build_method(method, net, geometry, blades, seed=seed, augment=augment, coords=coords)
    hist = train(m, BladeDataset(acqs, blades), output_dir, max_steps, lr=lr, batch_size=batch_size, seed=seed,
                 device=device, resume=resume)
    losses = hist.get("loss", [])
    info = {"method": method, "blade_fraction": blade_fraction, "snrs": list(snrs), "steps": max_steps,
            "geometry": {"n_blades": geometry.n_blades, "n_lines": geometry.n_lines, "n_readout": geometry.n_readout,
                         "im_size": geometry.im_size, "n_coils": n_coils},
            "train_images": [n for n, _ in train_imgs], "seed": seed, "readout_split": "interleaved",
            "init": init_checkpoint or "scratch", "augment": "dihedral" if augment else "none",
            "coil_maps": "estimated" if measured else coil_maps}
    if measured:  # file names are not kept: they may carry identifiers
        info.update({"train_data": "measured k-space", "train_acquisitions": len(acqs),
                     "estimated_snrs": [round(float(a["snr"]), 2) for a in acqs]})
    path = save_model(Path(output_dir) / "model.pt", net, info)
    k = max(1, min(10, len(losses) // 2))
    out = {"model": os.fspath(path), "loss_first": float(np.mean(losses[:k])) if losses else math.nan,
           "loss_last": float(np.mean(losses[-k:])) if losses else math.nan, "seconds": round(time.time() - t0, 1),
           "train_images": len(train_imgs) or len(acqs), "losses": [round(v, 6) for v in losses]}
    if evaluate_test:
        net.eval()
        test = make_acquisitions(test_imgs, geometry, snrs[:1], seed=2000 + seed, n_coils=n_coils)
        res = evaluate(test, geometry, blades, networks={method: net})
        out["test_psnr"] = float(np.mean(res["metrics"][method]["psnr"]))
    return out


# ----------------------------------------------------------------------------------------------- inference


def _lines_for(im_size: int) -> int:
    """Blade width used for measured / simulated inputs: 24 lines at 256² (3/32 of k-space), at least 4."""
    return max(4, int(round(24 * im_size / 256)))


def _case_blades(rec: Any, path: Path) -> dict[str, Any]:
    """Measured PROPELLER blades (.npz keys or ISMRMRD with a trajectory) as a reconstruction case."""
    k = np.asarray(rec.array)
    if k.ndim != 4 or not np.iscomplexobj(k):
        raise InputError(path, f"'kspace' must be complex [coils, blades, lines, readout], got {k.dtype} {k.shape}")
    c, nb, nl, nr = k.shape
    angles = rec.aux.get("angles")
    if angles is None or np.asarray(angles).size != nb:
        raise InputError(path, f"'angles' must hold one angle (radians) per blade ({nb})")
    sens = rec.aux.get("sens")
    size = rec.aux["image_size"] if "image_size" in rec.aux else (rec.meta.extra or {}).get("image_size")
    n = int(sens.shape[-1]) if sens is not None else int(np.asarray(size).reshape(-1)[0]) if size else nr
    if sens is not None and tuple(sens.shape) != (c, n, n):
        raise InputError(path, f"'sens' must be [coils, N, N] = [{c}, N, N], got {tuple(sens.shape)}")
    if not np.isfinite(k).all():
        raise InputError(path, "k-space holds NaN or infinite values")
    traj = rec.aux.get("trajectory")  # measured coordinates (ISMRMRD); else the standard blade pattern
    if traj is not None and tuple(traj.shape) != (nb, nl, nr, 2):
        raise InputError(path, f"'trajectory' must be [blades, lines, readout, 2], got {tuple(traj.shape)}")
    geometry = PropellerGeometry(nb, nl, nr, n)
    fmt = rec.meta.source.format
    return {"kspace": torch.from_numpy(k.astype(np.complex64)), "geometry": geometry,
            "angles": torch.as_tensor(np.asarray(angles, np.float32)).reshape(-1),
            "coords": None if traj is None else torch.from_numpy(np.asarray(traj, np.float32)),
            "sens": None if sens is None else torch.from_numpy(np.asarray(sens, np.complex64)),
            "reference": None, "affine": None, "kind": f"measured blades (.{fmt})" if fmt == "npz" else
            f"measured PROPELLER blades ({fmt}, {c} coils)"}

def _case_cartesian(rec: Any, path: Path) -> dict[str, Any]:
    """Cartesian raw data (twix, ISMRMRD, or an .npz with coil / line / readout axes) resampled onto 16 blades."""
    osf = (rec.meta.extra or {}).get("readout_oversampling")
    if not osf:  # twix stores it; for a bare .npz assume 2x when the readout is twice the lines (Siemens)
        ax = tuple(rec.meta.axes)
        n_ro, n_ln = rec.array.shape[ax.index("readout")], rec.array.shape[ax.index("line")]
        osf = 2.0 if rec.meta.source.format == "twix" or n_ro >= 2 * n_ln else 1.0
    osf = float(osf)
    coil_imgs = cartesian_coil_images(np.asarray(rec.array), rec.meta.axes, osf)
    ref = cartesian_recon(np.asarray(rec.array), rec.meta.axes, osf)
    n = max(coil_imgs.shape[1:])
    n += n % 4
    geometry = PropellerGeometry(16, _lines_for(n), 2 * n, n)  # readout 2x oversampled, as acquired
    k, _ = cartesian_to_blades(coil_imgs, geometry)
    h, w = ref.shape
    sq = np.zeros((n, n), np.float32)
    sq[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = ref
    return {"kspace": k, "geometry": geometry, "angles": None, "sens": None, "reference": sq, "affine": None,
            "kind": f"Cartesian {rec.meta.source.format} raw data, {coil_imgs.shape[0]} coils, resampled onto "
                    "16 blades (reference: Cartesian RSS)"}


def _kspace_case(rec: Any, path: Path) -> dict[str, Any]:
    """Dispatch a loaded k-space record: Cartesian (twix, ISMRMRD without trajectory, coil/line/readout) or blades."""
    fmt = rec.meta.source.format.lower()
    if fmt == "twix" or (fmt == "ismrmrd" and "angles" not in rec.aux):
        return _case_cartesian(rec, path)
    if "angles" in rec.aux:
        return _case_blades(rec, path)
    if all(a in rec.meta.axes for a in ("coil", "line", "readout")):
        return _case_cartesian(rec, path)
    raise InputError(path, "k-space .npz without PROPELLER keys (need 'kspace' [coils, blades, lines, "
                           "readout] and 'angles') or Cartesian coil / line / readout axes")


def read_kspace_case(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Measured k-space (blade ``.npz``, ISMRMRD, twix or Cartesian ``.npz``) as a reconstruction case.

    Returns:
        ``{"kspace": [C, blades, lines, readout], "geometry", "angles", "coords" (measured or None), "sens" (or
        None), "reference" (Cartesian RSS or None), "affine", "kind"}``.

    Raises:
        InputError: naming the file, when it is not k-space or cannot be used.
    """
    from medssl.io import load

    path = Path(path)
    rec = load(path)
    if rec.meta.modality != "KSPACE":
        raise InputError(path, f"not raw k-space ({rec.meta.modality}); training on measured data needs "
                               "blade .npz, ISMRMRD or twix files")
    return _kspace_case(rec, path)


class Inference:
    """``medssl infer propeller_mri_reconstruction``: blades (.npz, ISMRMRD), Cartesian raw data, or simulation.

    Args:
        inputs: paths.
        output_dir: where ``<stem>_recon.nii.gz`` and ``<stem>_panel.png`` go.
        checkpoint / model_info: the network (``models/model.pt`` + ``.json``).
        snr_checkpoints: networks trained at one SNR each (``models/model_snr*.pt``); when given, every input
            is reconstructed by the one nearest its SNR estimated from the data (:class:`NoiseMatched`) and
            ``checkpoint`` is not used.
        simulate_blades / snr: blades and SNR for magnitude DICOM / NIfTI inputs (simulation mode).
        blade_fraction: blades used; ``None`` = all of a measured input, half of a simulated one.
        max_size: magnitude images larger than this are resampled down to it (CPU time).
        device: ``cpu`` / ``cuda`` / ``auto``.
        seed: noise and phase seed of simulation mode.
        self_ensemble: average the network's reconstructions of the 8 rotated / flipped views of each acquisition
            (exact relabellings of the samples, :func:`medssl.mri.methods.reconstruct`); 8 times the network's
            time. The model card's figures are measured with it.
    """

    def __init__(
        self, inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str], model_info: str | os.PathLike[str] | None = None,
        simulate_blades: int | None = 16, snr: float | None = 20.0, blade_fraction: float | None = None,
        max_size: int = 256, device: str = "cpu", seed: int = 0, n_coils: int = 8,
        snr_checkpoints: Sequence[str | os.PathLike[str]] | None = None, self_ensemble: bool = True,
    ) -> None:
        self.inputs = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        self.output_dir = Path(output_dir)
        self.checkpoint = checkpoint
        self.model_info = model_info
        self.simulate_blades = simulate_blades
        self.snr = snr
        self.blade_fraction = blade_fraction
        self.max_size = int(max_size)
        self.device = "cpu" if device in ("auto", None) and not torch.cuda.is_available() else (
            "cuda" if device == "auto" else device)
        self.seed = int(seed)
        self.n_coils = int(n_coils)
        self.snr_checkpoints = [os.fspath(p) for p in (snr_checkpoints or [])]
        self.self_ensemble = _flag(self_ensemble, "self_ensemble")

    # ---- readers -> a common "case": kspace [C, nb, L, M], geometry, sens or None, reference, affine

    def _case_magnitude(self, rec: Any, path: Path) -> dict[str, Any]:
        if not self.simulate_blades or not self.snr:
            raise InputError(path, "a magnitude image needs simulation mode: --simulate-blades N --snr S")
        arr = np.asarray(rec.array, np.float32)
        axes = tuple(rec.meta.axes)
        affine = None if rec.meta.affine is None else np.asarray(rec.meta.affine, np.float64)
        if "channel" in axes:
            arr = arr.mean(axis=axes.index("channel"))
            axes = tuple(a for a in axes if a != "channel")
        if axes[:2] == ("x", "y"):  # NIfTI: middle slice (and first volume), rows = y
            while arr.ndim > 3:
                arr = arr[..., 0]
            z = arr.shape[2] // 2 if arr.ndim == 3 else 0
            img = arr[:, :, z].T if arr.ndim == 3 else arr.T
            if affine is not None:  # (row=y, col=x) index -> RAS
                affine = affine @ np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, z], [0, 0, 0, 1]], np.float64)
        else:
            if arr.ndim == 3:
                arr = arr[arr.shape[0] // 2]
                if affine is not None:
                    affine = None
            img = arr
        if img.ndim != 2 or min(img.shape) < 16:
            raise InputError(path, f"not a 2-D image large enough to simulate blades (shape {img.shape})")
        if not np.isfinite(img).all():
            raise InputError(path, "image holds NaN or infinite values")
        h, w = img.shape
        n0 = max(h, w)
        n = min(self.max_size, n0)
        n -= n % 4
        mag = normalise_magnitude(img, n)
        if affine is not None and affine.shape == (4, 4):
            f = n0 / n  # out index i -> padded index (i + 0.5) f - 0.5 -> source index minus the pad
            m = np.eye(4)
            m[0, 0] = m[1, 1] = f
            m[0, 3] = 0.5 * f - 0.5 - (n0 - h) / 2
            m[1, 3] = 0.5 * f - 0.5 - (n0 - w) / 2
            affine = affine @ m
        else:
            affine = None
        geometry = PropellerGeometry(int(self.simulate_blades), _lines_for(n), 2 * n, n)
        sens = birdcage_maps(self.n_coils, n)
        acq = simulate_acquisition(mag, geometry, sens, float(self.snr), torch.Generator().manual_seed(self.seed))
        return {"kspace": acq["kspace"], "geometry": geometry, "angles": None, "sens": None,
                "reference": mag.numpy(), "affine": affine,
                "kind": f"simulated: {self.simulate_blades} blades, SNR {self.snr:g}, {self.n_coils} birdcage coils"}

    def _case(self, path: Path) -> dict[str, Any]:
        from medssl.io import load

        rec = load(path)
        if rec.meta.modality == "KSPACE":
            return _kspace_case(rec, path)
        if rec.meta.modality in ("ECG", "SEG", "RTDOSE") or rec.meta.sampling_rate:
            raise InputError(path, f"not an MR image or k-space ({rec.meta.modality})")
        return self._case_magnitude(rec, path)

    # ---- reconstruction

    def _reconstruct(self, case: dict[str, Any], net: UnrolledRecon | NoiseMatched, simulated: bool
                     ) -> dict[str, Any]:
        g: PropellerGeometry = case["geometry"]
        frac = self.blade_fraction if self.blade_fraction else (0.5 if simulated else 1.0)
        blades = g.blades(frac)
        from medssl.transforms.kspace import propeller_coordinates

        coords = case.get("coords")
        if coords is None:
            coords = propeller_coordinates(g.n_blades, g.n_lines, g.n_readout, g.im_size, case["angles"])
        traj = coords[blades].reshape(-1, 2).T.contiguous()
        k = case["kspace"][:, blades].reshape(1, case["kspace"].shape[0], -1)
        op = PropellerOperator(traj, g.im_size, None)
        sens = case["sens"]
        if sens is None:
            sens = estimate_sens_from_blades(op, k[0])
        op = op.with_sens(sens)
        info: dict[str, str] = {}
        if isinstance(net, NoiseMatched):
            matched = net
            net, est, chosen = matched.select(op, case["kspace"][:, blades], g)
            info = {"estimated_snr": f"{est:.1f}", "network": matched.names.get(chosen, f"trained at SNR {chosen:g}")}
        dev = torch.device(self.device)
        with torch.no_grad():
            grid = op.gridding(k).abs()[0].numpy()
            rec = reconstruct(net.to(dev), op.to(dev), k.to(dev), self_ensemble=self.self_ensemble
                              ).abs()[0].cpu().numpy()
        return {"gridding": grid, "recon": rec, "n_blades_used": np.asarray(len(blades)), "info": info}

    def _panel(self, path: Path, case: dict[str, Any], out: dict[str, np.ndarray]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from medssl.io.writers import atomic_path

        ref = case["reference"]
        ours = "unrolled network (ours, self-ensemble)" if self.self_ensemble else "unrolled network (ours)"
        panels = [("gridding", out["gridding"]), (ours, out["recon"])]
        if ref is not None:
            panels.append(("reference", ref))
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
        for ax, (title, img) in zip(np.atleast_1d(axes), panels, strict=True):
            shown = img
            if ref is not None and title != "reference":
                from medssl.mri import image_metrics, scale_fit

                shown = img * scale_fit(img, ref)
                m = image_metrics(img, ref, body_mask(ref))
                title += f"\nPSNR {m['psnr']:.1f} dB, SSIM {m['ssim']:.3f}"
            vmax = float(np.percentile(ref if ref is not None else shown, 99.5)) or None
            ax.imshow(shown, cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        n_used = int(out["n_blades_used"])
        title = f"{path.name}: {case['kind']}; reconstructed from {n_used} of {case['geometry'].n_blades} blades"
        if out.get("info"):
            title += f"\nSNR estimated from the data {out['info']['estimated_snr']}: network {out['info']['network']}"
        fig.suptitle(title, fontsize=9)
        dest = self.output_dir / f"{_stem(path)}_panel.png"
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
        plt.close(fig)
        return dest

    def run(self) -> dict[str, Any]:
        """Process every input; bad ones get one line on stderr and are listed under ``failed``."""
        from medssl.io import write_nifti

        self.output_dir.mkdir(parents=True, exist_ok=True)
        net: UnrolledRecon | NoiseMatched
        if self.snr_checkpoints:
            net = load_noise_matched(self.snr_checkpoints)
        else:
            net, _ = load_model(self.checkpoint, self.model_info)
        outputs: dict[str, dict[str, str]] = {}
        failed: list[str] = []
        for p in self.inputs:
            path = Path(p)
            try:
                if not path.exists():
                    raise InputError(path, "file not found")
                case = self._case(path)
                simulated = case["kind"].startswith("simulated")
                out = self._reconstruct(case, net, simulated)
                stem = _stem(path)
                rec = out["recon"].astype(np.float32)
                nii = write_nifti(self.output_dir / f"{stem}_recon.nii.gz", rec, case["affine"])
                png = self._panel(path, case, out)
                outputs[os.fspath(p)] = {"recon_nifti": os.fspath(nii), "panel_png": os.fspath(png), **out["info"]}
            except (InputError, MedsslError) as exc:
                print(" ".join(str(exc).split()), file=sys.stderr, flush=True)
                failed.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - the contract: one line per bad input, never a traceback
                if os.environ.get("MEDSSL_DEBUG"):
                    raise
                msg = f"{p}: cannot reconstruct: {type(exc).__name__}: {exc}"
                print(" ".join(msg.split()), file=sys.stderr, flush=True)
                failed.append(msg)
        return {"outputs": outputs, "failed": failed}


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", ".dcm.gz", ".nii", ".dcm", ".npz", ".dat"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem

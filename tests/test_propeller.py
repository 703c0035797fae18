"""propeller_mri_reconstruction: NUFFT operator, blade geometry, splits, reconstruction, training, twix, metadata."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl import samples
from medssl.io import load
from medssl.mri import (
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
    estimate_sens_from_blades,
    image_metrics,
    simulate_acquisition,
)
from medssl.transforms.kspace import (
    blade_angles,
    blade_subset,
    body_mask,
    dihedral_image,
    dihedral_inverse,
    dihedral_trajectory,
    noise_sigma_for_snr,
    normalise_magnitude,
    propeller_coordinates,
    readout_split,
    ssdu_split,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "propeller_mri_reconstruction"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def mr64() -> torch.Tensor:
    return normalise_magnitude(load(samples.mr_small()).array, 64)


def test_nufft_adjoint_identity_and_toeplitz():
    g = torch.Generator().manual_seed(0)
    geo = PropellerGeometry(8, 6, 48, 48)
    sens = birdcage_maps(4, 48)
    op = PropellerOperator(geo.trajectory(), 48, sens)
    x = torch.randn(2, 48, 48, dtype=torch.complex64, generator=g)
    y = torch.randn(2, 4, op.n_samples, dtype=torch.complex64, generator=g)
    lhs = torch.vdot(op.forward(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    assert abs(lhs - rhs) / abs(lhs) < 1e-4
    # the Toeplitz-embedded normal operator equals A^H W A
    direct = op.adjoint(op.dcf * op.forward(x))
    assert (op.normal(x) - direct).abs().norm() / direct.abs().norm() < 1e-3
    # unitary scaling: on a Nyquist Cartesian grid the NUFFT preserves the norm (noise sigma = image sigma)
    k = (torch.arange(48) - 24) * (2 * math.pi / 48)
    cart = torch.stack(torch.meshgrid(k, k, indexing="ij")).reshape(2, -1)
    single = PropellerOperator(cart, 48, None, dcf=torch.ones(cart.shape[1]), normalise_dcf=False, toeplitz=False)
    ratio = single.forward(x).abs().norm() / x.abs().norm()
    assert abs(float(ratio) - 1.0) < 1e-3


def test_blade_geometry_angles_and_centre():
    n, nb, nl, nr = 64, 12, 8, 64
    ang = blade_angles(nb)
    assert torch.allclose(ang, torch.arange(nb) * math.pi / nb)
    assert float(ang.max()) < math.pi  # 180 degrees, not 360
    c = propeller_coordinates(nb, nl, nr, n)
    assert c.shape == (nb, nl, nr, 2)
    step = 2 * math.pi / n
    for b in range(nb):
        t = float(ang[b])
        # every blade passes through the k-space centre
        r = c[b].norm(dim=-1)
        assert float(r.min()) <= step / 2 + 1e-6
        # readout direction (sin t, cos t), lines Nyquist-spaced across it
        d = c[b, 0, 1] - c[b, 0, 0]
        assert torch.allclose(d / d.norm(), torch.tensor([math.sin(t), math.cos(t)]), atol=1e-4)
        dl = c[b, 1, 0] - c[b, 0, 0]
        assert abs(float(dl.norm()) - step) < 1e-4
    # the central disc of radius (lines / 2) Nyquist steps is covered by every blade (PROPELLER's redundancy)
    covered = (c.norm(dim=-1) < (nl / 2 - 1) * step).flatten(1).sum(1)
    assert bool((covered > 0).all())
    assert blade_subset(16, 0.5).tolist() == list(range(0, 16, 2))
    assert blade_subset(16, 1.0).tolist() == list(range(16))


@pytest.mark.parametrize("mode", ["interleaved", "contiguous"])
def test_readout_halves_disjoint_cover_blade_and_centre(mode):
    nb, nl, nr, n = 6, 8, 64, 64
    a, b = readout_split(nb, nl, nr, mode=mode)
    assert a.shape == b.shape == (nb, nl, nr)
    assert not bool((a & b).any())
    assert bool((a | b).all())
    assert int(a.sum()) == int(b.sum()) == nb * nl * nr // 2
    swapped = readout_split(nb, nl, nr, mode=mode, swap=True)
    assert torch.equal(swapped[0], b) and torch.equal(swapped[1], a)
    r = propeller_coordinates(nb, nl, nr, n).norm(dim=-1)
    step = 2 * math.pi / n
    for s in (a, b):  # both sets inform the k-space centre
        assert float(r[s].min()) <= step + 1e-6
    g = torch.Generator().manual_seed(0)
    theta, lam = ssdu_split((nb, nl, nr), rho=0.4, coords=propeller_coordinates(nb, nl, nr, n), generator=g,
                            centre_radius=0.1)
    assert not bool((theta & lam).any()) and bool((theta | lam).all())
    assert abs(float(lam.float().mean()) - 0.4) < 0.01
    assert float(r[lam].min()) >= 0.1


def test_noiseless_fully_sampled_reconstructs(mr64):
    geo = PropellerGeometry(16, 8, 64, 64)  # 16 x 8 lines >= pi/2 x 64: Nyquist everywhere
    sens = birdcage_maps(8, 64)
    acq = simulate_acquisition(mr64, geo, sens, snr=None, generator=torch.Generator().manual_seed(0))
    op = PropellerOperator(geo.trajectory(), 64, sens)
    y = acq["kspace"].reshape(1, 8, -1)
    x = cg_sense(op, y, lam=0.0, n_iter=30)[0]
    truth = acq["image"]
    nmse = float((x - truth).abs().pow(2).sum() / truth.abs().pow(2).sum())
    assert nmse < 2e-3, nmse
    # gridding alone is close too, and estimated coil maps give the same image
    grid = op.gridding(y)[0]
    assert image_metrics(grid, truth, acq["mask"])["nmse"] < 0.02
    est = estimate_sens_from_blades(op, y[0])
    x2 = cg_sense(op.with_sens(est), y, lam=0.0, n_iter=30)[0]
    assert image_metrics(x2, truth, acq["mask"])["nmse"] < 0.02


def test_snr_definition_sets_image_noise(mr64):
    geo = PropellerGeometry(8, 8, 64, 64)
    sens = birdcage_maps(4, 64)
    g = torch.Generator().manual_seed(1)
    acq = simulate_acquisition(mr64, geo, sens, snr=10.0, generator=g)
    noise = acq["kspace"] - acq["clean_kspace"]
    sigma = noise_sigma_for_snr(acq["image"], acq["mask"], 10.0)
    assert abs(float(noise.abs().pow(2).mean().sqrt()) / sigma - 1.0) < 0.02
    mask = body_mask(mr64)
    assert 0.2 < float(mask.float().mean()) < 0.95


def test_regulariser_residual_stays_inside_the_sampled_kspace_disc():
    from medssl.mri import kspace_support_mask

    n = 32
    traj = torch.tensor([[0.0, math.pi / 2], [0.0, 0.0]])  # largest radius pi/2
    mask = kspace_support_mask(traj, n)
    assert abs(float(mask.float().mean()) - math.pi / 16) < 0.02  # disc of radius pi/2 in [-pi, pi)^2
    torch.manual_seed(0)
    net = UnrolledRecon(n_unrolls=1, cg_iters=1, channels=(4, 8), kspace_support=True)
    with torch.no_grad():
        net.res_gain.fill_(1.0)
    x = torch.randn(1, n, n, dtype=torch.complex64)
    outside = ~mask

    def energy_outside(r):
        return float(torch.fft.fft2(r).abs()[..., outside].pow(2).sum() / torch.fft.fft2(r).abs().pow(2).sum())

    with torch.no_grad():
        free = net.denoise(x) - x
        projected = net.denoise(x, mask) - x
    assert energy_outside(free) > 0.1  # a random U-Net fills the corners
    assert energy_outside(projected) < 1e-8


@pytest.mark.parametrize("method", ["nlm", "tv", "wavelet"])
def test_classic_denoisers_raise_psnr_of_a_noisy_real_image(mr64, method):
    from medssl.mri.baselines import denoise_magnitude, estimate_noise_sigma

    g = torch.Generator().manual_seed(3)
    clean = mr64.numpy().astype(np.float64)
    noisy = np.abs(clean + 0.05 * torch.randn(clean.shape, generator=g, dtype=torch.float64).numpy())
    assert abs(estimate_noise_sigma(noisy - clean) / 0.05 - 1.0) < 0.15  # the MAD estimate of pure noise

    def psnr(x):
        return 10 * np.log10(clean.max() ** 2 / np.mean((x - clean) ** 2))

    assert psnr(denoise_magnitude(noisy, method, 1.0)) > psnr(noisy) + 2.0
    with pytest.raises(ValueError, match="wavelet"):
        denoise_magnitude(noisy, "median")
    # most of the field of view exactly zero (outside estimated coil maps): sigma from the rest, still denoises
    framed = np.zeros((192, 192))
    framed[64:128, 64:128] = noisy
    assert abs(estimate_noise_sigma(framed - np.pad(clean, 64)) / 0.05 - 1.0) < 0.15
    if method != "wavelet":  # BayesShrink's per-band thresholds are thrown by the zero frame, whatever the sigma
        assert psnr(denoise_magnitude(framed, method, 1.0)[64:128, 64:128]) > psnr(noisy) + 2.0
    assert np.array_equal(denoise_magnitude(np.zeros((8, 8)), method), np.zeros((8, 8)))


def test_twenty_training_steps_lower_kspace_loss(mr64):
    torch.manual_seed(0)
    geo = PropellerGeometry(8, 6, 64, 64)
    sens = birdcage_maps(4, 64)
    acq = simulate_acquisition(mr64, geo, sens, snr=20.0, generator=torch.Generator().manual_seed(2))
    blades = geo.blades(1.0)
    ds = BladeDataset([acq], blades)
    batch = {k: v[None] for k, v in ds[0].items()}
    net = UnrolledRecon(n_unrolls=2, cg_iters=2, channels=(8, 16))
    method = ReadoutSplitSSL(net, geo.trajectory(blades), geo.sample_shape(len(blades)), 64, swap=False)
    with torch.no_grad():
        before = float(method(batch)["loss"])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(20):
        loss = method(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(method(batch)["loss"])
    assert math.isfinite(after) and after < 0.98 * before, (before, after)


def test_dihedral_kspace_views_are_exact_acquisitions_of_the_rotated_object():
    # each of the 8 symmetries: the NUFFT of the transformed image on the transformed trajectory equals the
    # original samples times the phase, for an image that is non-zero up to the grid's edge
    g = torch.Generator().manual_seed(3)
    geo = PropellerGeometry(8, 6, 64, 32)
    traj = geo.trajectory()
    x = torch.randn(1, 32, 32, generator=g, dtype=torch.complex64)
    y = PropellerOperator(traj, 32, None, normalise_dcf=False, toeplitz=False).forward(x)
    errors, distinct = [], set()
    for sym in range(8):
        t2, phase = dihedral_trajectory(traj, sym)
        y2 = PropellerOperator(t2, 32, None, normalise_dcf=False, toeplitz=False).forward(dihedral_image(x, sym))
        errors.append(float((y2 - y * phase).norm() / y.norm()))
        distinct.add(tuple(dihedral_image(torch.arange(4.0).reshape(2, 2), sym).reshape(-1).tolist()))
    assert max(errors) < 5e-3, errors
    assert len(distinct) == 8  # the 8 elements are different transforms
    # a wrong phase (none) is far off for the symmetries that need one
    t1, _ = dihedral_trajectory(traj, 1)
    y1 = PropellerOperator(t1, 32, None, normalise_dcf=False, toeplitz=False).forward(dihedral_image(x, 1))
    assert float((y1 - y).norm() / y.norm()) > 0.1
    with pytest.raises(ValueError):
        dihedral_image(x, 8)


def test_augmented_training_views_are_data_consistent(mr64):
    # noiseless blades: under every symmetry the method's operator maps the transformed clean image onto the
    # transformed samples (coil maps, phase, trajectory and density weights all consistent)
    geo = PropellerGeometry(8, 6, 128, 64)
    sens = birdcage_maps(4, 64)
    acq = simulate_acquisition(mr64, geo, sens, snr=None, generator=torch.Generator().manual_seed(1))
    blades = geo.blades(0.5)
    item = BladeDataset([acq], blades)[0]
    batch = {k: v[None] for k, v in item.items()}
    net = UnrolledRecon(n_unrolls=1, cg_iters=1, channels=(8, 16))
    method = SupervisedRecon(net, geo.trajectory(blades), 64, augment=True)
    for sym in range(8):
        y, s, t = method.transform(sym, batch["kspace"], batch["sens"], batch["target"])
        op = method._op("all", None, y.device, sym=sym).with_sens(s)
        assert float((op.forward(t) - y).norm() / y.norm()) < 5e-3
        assert torch.equal(op.dcf, method._op("all", None, y.device).dcf)
    method.train()
    assert math.isfinite(float(method(batch)["loss"].detach()))
    ssl = ReadoutSplitSSL(net, geo.trajectory(blades), geo.sample_shape(len(blades)), 64, augment=True).train()
    torch.manual_seed(0)
    seen = {int(ssl(batch)["symmetry"]) for _ in range(12)}
    assert len(seen) >= 4  # random views while training
    ssl.eval()
    assert {int(ssl(batch)["symmetry"]) for _ in range(4)} == {0}  # never at evaluation


def test_dihedral_inverse_undoes_every_symmetry():
    x = torch.arange(12.0).reshape(3, 4)[None].expand(2, 3, 4).clone()
    square = torch.arange(16.0).reshape(4, 4)
    for sym in range(8):
        inv = dihedral_inverse(sym)
        assert torch.equal(dihedral_image(dihedral_image(square, sym), inv), square), sym
        assert torch.equal(dihedral_image(dihedral_image(x, inv), sym), x), sym
    assert sorted(dihedral_inverse(s) for s in range(8)) == list(range(8))  # a bijection


def test_self_ensemble_is_exactly_equivariant_and_views_are_consistent(mr64):
    # noiseless blades and a random (so not rotation-equivariant) network: the operator's views map the turned
    # image onto the relabelled samples, gridding of a view turned back is the gridding of the original, and the
    # self-ensemble's output turns with the object, which a single pass does not
    from medssl.mri.methods import reconstruct

    torch.manual_seed(0)
    geo = PropellerGeometry(8, 6, 128, 64)
    sens = birdcage_maps(4, 64)
    acq = simulate_acquisition(mr64, geo, sens, snr=None, generator=torch.Generator().manual_seed(1))
    blades = geo.blades(0.5)
    y = acq["kspace"][:, blades].reshape(1, 4, -1)
    op = PropellerOperator(geo.trajectory(blades), 64, sens)
    x = acq["image"][None]
    grid = op.gridding(y)
    for sym in (1, 2, 5):
        view, phase = op.dihedral(sym)
        assert float((view.forward(dihedral_image(x, sym)) - y * phase).norm() / y.norm()) < 5e-3
        back = dihedral_image(view.gridding(y * phase), dihedral_inverse(sym))
        assert float((back - grid).norm() / grid.norm()) < 5e-3, sym
        assert op.dihedral(sym)[0].traj is view.traj  # computed once
    net = UnrolledRecon(n_unrolls=1, cg_iters=2, channels=(8, 16)).eval()
    with torch.no_grad():
        net.res_gain.fill_(0.5)  # zero at initialisation: the regulariser would do nothing
        base = reconstruct(net, op, y, self_ensemble=True)
        single = reconstruct(net, op, y)
        view, phase = op.dihedral(2)
        turned = dihedral_image(reconstruct(net, view, y * phase, self_ensemble=True), dihedral_inverse(2))
        turned_single = dihedral_image(reconstruct(net, view, y * phase), dihedral_inverse(2))
    err = float((turned - base).norm() / base.norm())
    err_single = float((turned_single - single).norm() / single.norm())
    assert err < 1e-4, err
    assert err_single > 5 * err, (err_single, err)  # the check has teeth: one pass is not equivariant
    assert float((base - single).norm() / single.norm()) > 1e-4  # the ensemble is not the single pass


def test_twix_gre_reconstructs_phantom_and_propeller_path():
    rec = load(samples.twix_gre())
    osf = float(rec.meta.extra.get("readout_oversampling") or 2.0)
    img = cartesian_recon(rec.array, rec.meta.axes, osf)
    assert img.shape == (160, 160)
    # not noise: the phantom's edges dominate the gradient (noise alone gives a ratio of about 2-3)
    gy, gx = np.gradient(img.astype(np.float64))
    grad = np.hypot(gx, gy)
    assert np.percentile(grad, 99) / np.median(grad) > 8
    # and the image is bright inside the phantom, dark outside
    assert img[60:100, 60:100].mean() > 4 * np.median(img[:8, :8])
    # resampled onto blades and through the PROPELLER path, gridding matches the Cartesian image
    coil = cartesian_coil_images(rec.array, rec.meta.axes, osf)
    geo = PropellerGeometry(16, 16, 160, 160)
    k, _ = cartesian_to_blades(coil, geo)
    op = PropellerOperator(geo.trajectory(), 160, None)
    y = k.reshape(1, k.shape[0], -1)
    op = op.with_sens(estimate_sens_from_blades(op, y[0]))
    grid = op.gridding(y).abs()[0].numpy()
    corr = np.corrcoef(grid.ravel(), img.ravel())[0, 1]
    assert corr > 0.9, corr


def test_demo_uses_moved_cartesian_recon():
    import medssl.demo as demo
    from medssl.mri import data

    assert demo.cartesian_recon is data.cartesian_recon


@contextlib.contextmanager
def _study(shared_data):
    """The bundle's ``scripts.propeller`` with the study images available (else the test is skipped)."""
    import importlib

    from medssl.bundles import _use_bundle_scripts

    _use_bundle_scripts(str(BUNDLE))
    try:
        prop = importlib.import_module("scripts.propeller")
        if not prop.is_full_dataset(shared_data):
            pytest.skip("../shared/data lacks the study images")
        yield prop
    finally:
        if str(BUNDLE) in sys.path:
            sys.path.remove(str(BUNDLE))


def test_metadata_validates_and_configs_parse():
    from medssl.bundles import load_bundle_config, verify_metadata

    verify_metadata(BUNDLE / "configs" / "metadata.json")
    for wf in ("pretrain", "finetune", "inference", "multi_gpu_pretrain"):
        parser = load_bundle_config("propeller_mri_reconstruction", wf)
        assert "run" in parser
    net = load_bundle_config("propeller_mri_reconstruction", "inference").get_parsed_content("network_def")
    out = net(torch.zeros(1, 2, 32, 32))
    assert out.shape == (1, 2, 32, 32)


def test_infer_cli_twix_and_bad_input(tmp_path, capsys):
    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("models/model.pt not trained yet (scripts/experiment.py writes it)")
    from medssl.cli import main

    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom at all")
    rc = main(["infer", "propeller_mri_reconstruction", str(samples.twix_gre()), str(bad), "--out",
               str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "broken.dcm" in err[0]
    assert (tmp_path / "out" / "gre_recon.nii.gz").is_file()
    assert (tmp_path / "out" / "gre_panel.png").is_file()
    nii = load(tmp_path / "out" / "gre_recon.nii.gz").array
    assert nii.shape == (160, 160) and np.isfinite(nii).all() and nii.std() > 0
    # --no-self-ensemble reaches the bundle: one pass instead of the 8-view average, a close but different image
    rc = main(["infer", "propeller_mri_reconstruction", str(samples.twix_gre()), "--out", str(tmp_path / "one"),
               "--device", "cpu", "--no-self-ensemble"])
    assert rc == 0
    one = load(tmp_path / "one" / "gre_recon.nii.gz").array
    assert one.shape == nii.shape and not np.allclose(one, nii, rtol=0, atol=1e-4 * float(np.abs(nii).max()))
    assert np.corrcoef(one.ravel(), nii.ravel())[0, 1] > 0.98


def test_network_def_loads_the_shipped_checkpoint():
    """A MONAI user's path: inference.json's network_def takes models/model.pt strictly, as model.json says."""
    import json

    from medssl.bundles import load_bundle_config

    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("no shipped checkpoint in models/")
    net = load_bundle_config("propeller_mri_reconstruction", "inference").get_parsed_content("network_def")
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    info = json.loads((BUNDLE / "models" / "model.json").read_text())["network"]
    assert list(net.channels) == info["channels"] and net.n_unrolls == info["n_unrolls"]
    # trained: the zero-initialised residual gain has moved
    assert net.cg_iters == info["cg_iters"] and float(net.res_gain.detach()) != 0.0


def test_shipped_checkpoint_matches_its_model_card(shared_data):
    """The committed network, re-evaluated on the fixed test images, gives the figures docs/results.json holds."""
    from medssl.eval.results import load_results

    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("no shipped checkpoint in models/")
    with _study(shared_data) as prop:
        net, meta = prop.load_model(BUNDLE / "models" / "model.pt")
        geo = prop.PropellerGeometry(**{k: meta["geometry"][k] for k in ("n_blades", "n_lines", "n_readout",
                                                                           "im_size")})
        _, test = prop.study_images(shared_data, geo.im_size)
        acqs = prop.make_acquisitions(test, geo, [10.0], seed=2000, n_coils=meta["geometry"]["n_coils"])
        res = prop.evaluate(acqs, geo, geo.blades(0.5), networks={"self_supervised": net})["metrics"]
    ours = float(np.mean(res["self_supervised"]["psnr"]))
    # gridding from the same acquisitions, computed here (no network): the network removes most of the noise
    op = PropellerOperator(geo.trajectory(geo.blades(0.5)), geo.im_size, acqs[0]["sens"])
    grid = []
    for a in acqs:
        y = a["kspace"][:, geo.blades(0.5)].reshape(1, a["kspace"].shape[0], -1)
        grid.append(image_metrics(op.with_sens(a["sens"]).gridding(y).abs()[0], a["magnitude"], a["mask"])["psnr"])
    assert ours > float(np.mean(grid)) + 1.0
    card = [r["value"] for r in load_results(BUNDLE / "docs" / "results.json")
            if r["task"] == "propeller_128px_snr10_half_blades_model" and r["seed"] == 0
            and r["method"] == "self_supervised" and r["metric"] == "psnr"]
    assert len(card) == 1 and abs(ours - card[0]) < 0.05


def test_fixed_split_on_shared_data(shared_data):
    with _study(shared_data) as prop:
        train, test = prop.study_images(shared_data, 128)
    assert len(train) == 45 and len(test) == 4
    assert not {n for n, _ in train} & {n for n, _ in test}


def test_inference_with_untrained_weights_writes_recon_and_panel(tmp_path, capsys):
    """The inference path end to end without committed weights: an untrained network saved like the study's."""
    from medssl.bundles import load_bundle_config, run_workflow

    propeller = load_bundle_config("propeller_mri_reconstruction", "inference").get_parsed_content("propeller")
    torch.manual_seed(0)
    ckpt = propeller.save_model(tmp_path / "model.pt", propeller.build_network(), {"method": "untrained"})
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom at all")
    (summary,) = run_workflow("propeller_mri_reconstruction", "inference", {
        "inputs": [str(samples.mr_small()), str(bad)], "output_dir": str(tmp_path / "out"), "device": "cpu",
        "checkpoint": str(ckpt), "model_info": str(ckpt.with_suffix(".json")), "simulate_blades": 8, "snr": 20.0,
    })
    assert len(summary["failed"]) == 1 and "broken.dcm" in summary["failed"][0]
    stem = Path(str(samples.mr_small())).stem
    recon = load(tmp_path / "out" / f"{stem}_recon.nii.gz").array
    assert np.isfinite(recon).all() and recon.std() > 0
    assert (tmp_path / "out" / f"{stem}_panel.png").is_file()


def test_experiment_evaluate_names_a_bad_checkpoint(tmp_path, capsys):
    """``experiment.py --evaluate`` with a missing or foreign file: one line naming it, exit code 2, no traceback."""
    import subprocess

    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"garbage")
    for path in (tmp_path / "missing.pt", bad):
        proc = subprocess.run(
            [sys.executable, str(BUNDLE / "scripts" / "experiment.py"), "--evaluate", str(path), "--out",
             str(tmp_path / "out"), "--data", "samples"], capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and path.name in lines[0] and "Traceback" not in proc.stderr


def test_experiment_table_merges_per_seed_evaluations(tmp_path):
    """``experiment.py --table``: rows written twice (the conventional rows of two runs) count once per seed."""
    import subprocess

    def row(seed: int, method: str, value: float) -> dict:
        return {"task": "t", "snr": 20.0, "blade_fraction": 0.5, "seed": seed, "method": method, "metric": "psnr",
                "value": value, "im_size": 128}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([row(0, "cg_sense", 30.0), row(0, "self_supervised", 31.0)]))
    b.write_text(json.dumps([row(0, "cg_sense", 30.0), row(1, "cg_sense", 32.0), row(1, "self_supervised", 35.0)]))
    proc = subprocess.run([sys.executable, str(BUNDLE / "scripts" / "experiment.py"), "--table", str(a), str(b)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split("|")[1].strip(): ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert lines["cg_sense"].rstrip(" |").endswith("2")  # seeds 0 and 1, the duplicate of seed 0 dropped
    assert "31.00 ± 1.41" in lines["cg_sense"]  # mean and std of 30 and 32
    assert "33.00 ± 2.83" in lines["self_supervised"]
    # the task suffixes of the evaluation options are read back into the table's caption
    c = tmp_path / "c.json"
    c.write_text(json.dumps([{**row(0, "cg_sense", 30.0), "task": "p_noise_matched_estimated_sens_cf0.3_self_ensemble",
                              "model": "m.pt"}]))
    cap = subprocess.run([sys.executable, str(BUNDLE / "scripts" / "experiment.py"), "--table", str(c)],
                         capture_output=True, text=True, timeout=120).stdout
    assert "noise-matched networks `m.pt`" in cap and "radius 0.3 x pi" in cap and "self-ensemble" in cap
    missing = subprocess.run([sys.executable, str(BUNDLE / "scripts" / "experiment.py"), "--table",
                              str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nope.json" in missing.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    bad = subprocess.run([sys.executable, str(BUNDLE / "scripts" / "experiment.py"), "--table", str(broken)],
                         capture_output=True, text=True, timeout=120)
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(err) == 1 and "broken.json" in err[0] and "Traceback" not in bad.stderr


def _propeller_module():
    from medssl.bundles import load_bundle_config

    return load_bundle_config("propeller_mri_reconstruction", "inference").get_parsed_content("propeller")


def test_noise_level_estimated_from_the_blades_matches_the_simulated_noise():
    """The per-sample sigma (readout ends) and the image-domain SNR, against the known simulated truth."""
    from medssl.mri import estimate_sample_sigma, estimate_snr

    g = torch.Generator().manual_seed(0)
    pure = (torch.randn(8, 8, 12, 256, generator=g) + 1j * torch.randn(8, 8, 12, 256, generator=g)) * (0.3 / 2**0.5)
    assert abs(estimate_sample_sigma(pure.to(torch.complex64)) / 0.3 - 1) < 0.03
    mag = normalise_magnitude(np.asarray(load(samples.mr_small()).array, np.float32), 128)  # the study's matrix
    geo = PropellerGeometry(16, 12, 256, 128)
    sens = birdcage_maps(8, 128)
    blades = geo.blades(0.5)
    op = PropellerOperator(geo.trajectory(blades), 128, sens)
    for snr in (10.0, 20.0):
        acq = simulate_acquisition(mag, geo, sens, snr, generator=torch.Generator().manual_seed(1))
        k = acq["kspace"][:, blades]
        sigma = estimate_sample_sigma(k)
        assert abs(sigma / acq["sigma_sample"] - 1) < 0.1
        y = k.reshape(1, 8, -1)
        est = estimate_snr(op, y, sigma, oversampling=2.0)
        assert 0.8 * snr < est < 1.05 * snr
        # invariant to the data's scale (a vendor's k-space units)
        assert estimate_snr(op, 1e3 * y, estimate_sample_sigma(1e3 * k), 2.0) == pytest.approx(est, rel=1e-3)
    with pytest.raises(ValueError, match="complex"):
        estimate_sample_sigma(pure.real)


def test_noise_matched_chooses_the_nearest_training_snr_on_a_log_scale(tmp_path):
    from medssl.errors import MedsslError

    prop = _propeller_module()
    nets = {10.0: UnrolledRecon(1, 1, (4, 8)), 20.0: UnrolledRecon(1, 1, (4, 8))}
    matched = prop.NoiseMatched(nets)
    assert [matched.choose(s) for s in (3.0, 14.0, 14.2, 60.0, math.inf, 0.0)] == [10.0, 10.0, 20.0, 20.0, 20.0, 10.0]
    both = prop.save_model(tmp_path / "both.pt", prop.build_network(channels=[4, 8]), {"snrs": [10.0, 20.0]})
    with pytest.raises(MedsslError, match="both.pt"):
        prop.load_noise_matched([both])
    a = prop.save_model(tmp_path / "a.pt", prop.build_network(channels=[4, 8]), {"snrs": [20.0]})
    b = prop.save_model(tmp_path / "b.pt", prop.build_network(channels=[4, 8]), {"snrs": [20.0]})
    with pytest.raises(MedsslError, match="b.pt"):
        prop.load_noise_matched([a, b])


def test_inference_reconstructs_each_input_with_the_network_of_its_snr(tmp_path):
    """Two networks trained at SNR 10 and 20 (untrained stand-ins saved like them): the one whose SNR the data has."""
    from medssl.bundles import run_workflow

    prop = _propeller_module()
    torch.manual_seed(0)
    ckpts = [prop.save_model(tmp_path / f"model_snr{s}.pt", prop.build_network(channels=[4, 8, 16]),
                             {"method": "untrained", "snrs": [float(s)]}) for s in (10, 20)]
    for snr, expected in ((10.0, "model_snr10.pt"), (20.0, "model_snr20.pt")):
        (summary,) = run_workflow("propeller_mri_reconstruction", "inference", {
            "inputs": [str(samples.mr_small())], "output_dir": str(tmp_path / f"out{snr:g}"), "device": "cpu",
            "snr_checkpoints": [str(c) for c in ckpts], "simulate_blades": 16, "snr": snr,
            "checkpoint": str(tmp_path / "absent.pt")})
        (out,) = summary["outputs"].values()
        assert out["network"] == expected, out
        assert 0.7 * snr < float(out["estimated_snr"]) < 1.05 * snr


def test_inference_config_uses_the_noise_matched_networks_unless_a_checkpoint_is_named(tmp_path):
    from medssl.bundles import load_bundle_config

    shipped = sorted(p.name for p in (BUNDLE / "models").glob("model_snr*.pt"))
    if not shipped:
        pytest.skip("no noise-matched networks in models/")
    parser = load_bundle_config("propeller_mri_reconstruction", "inference")
    assert [Path(p).name for p in parser.get_parsed_content("snr_checkpoints")] == shipped
    parser = load_bundle_config("propeller_mri_reconstruction", "inference")
    parser["checkpoint"] = str(tmp_path / "mine.pt")
    assert parser.get_parsed_content("snr_checkpoints") == []


def test_shipped_noise_matched_networks_match_their_model_card(shared_data):
    """models/model_snr10.pt and model_snr20.pt on seed 0's test acquisitions: each acquisition goes to the network
    of its own SNR, and the PSNR is the one docs/results.json holds, with true and with estimated coil maps, each
    with and without the self-ensemble (what ``medssl infer`` does by default)."""
    from medssl.eval.results import load_results

    paths = sorted((BUNDLE / "models").glob("model_snr*.pt"))
    if not paths:
        pytest.skip("no noise-matched networks in models/")
    with _study(shared_data) as prop:
        matched = prop.load_noise_matched(paths)
        meta = json.loads(paths[0].with_suffix(".json").read_text())
        geo = prop.PropellerGeometry(**{k: meta["geometry"][k] for k in ("n_blades", "n_lines", "n_readout",
                                                                           "im_size")})
        _, test = prop.study_images(shared_data, geo.im_size)
        rows = load_results(BUNDLE / "docs" / "results.json")
        for snr in matched.snrs:
            acqs = prop.make_acquisitions(test, geo, [snr], seed=2000, n_coils=meta["geometry"]["n_coils"])
            # estimated maps: as medssl infer has them on measured data; self-ensemble: medssl infer's default
            for estimated, ensemble in ((False, False), (True, False), (False, True), (True, True)):
                res = prop.evaluate(acqs, geo, geo.blades(0.5), networks={"self_supervised": matched},
                                    estimated_sens=estimated, self_ensemble=ensemble)
                assert [c for _, c in res["selection"]["self_supervised"]] == [snr] * len(test)
                ours = float(np.mean(res["metrics"]["self_supervised"]["psnr"]))
                task = (f"propeller_128px_snr{snr:g}_half_blades_noise_matched"
                        + "_estimated_sens" * estimated + "_self_ensemble" * ensemble)
                card = [r["value"] for r in rows if r["task"] == task and r["seed"] == 0
                        and r["method"] == "self_supervised" and r["metric"] == "psnr"]
                assert len(card) == 1 and abs(ours - card[0]) < 0.05, (task, ours, card)


def _blade_files(folder: Path, n: int = 3, geo: PropellerGeometry | None = None, scale: float = 1e3) -> list[Path]:
    """``n`` simulated SNR-20 acquisitions of rotations of the shipped head image, saved as blade ``.npz`` files
    the way a scanner export would hold them (arbitrary k-space scale, no coil maps)."""
    geo = geo or PropellerGeometry(8, 6, 128, 64)
    mag = normalise_magnitude(np.asarray(load(samples.mr_small()).array, np.float32), geo.im_size)
    sens = birdcage_maps(4, geo.im_size)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        acq = simulate_acquisition(torch.rot90(mag, i), geo, sens, 20.0, generator=torch.Generator().manual_seed(i))
        path = folder / f"scan_{i}.npz"
        np.savez(path, kspace=acq["kspace"].numpy() * scale, angles=geo.angles().numpy(), image_size=geo.im_size)
        out.append(path)
    return out


def test_pretrain_on_measured_blade_files_trains_exactly_like_the_simulated_study(tmp_path):
    """The study's own simulated acquisitions saved as scanner-scaled .npz files (with their coil maps): training
    from the folder gives the same losses, step for step, as training from the images."""
    prop = _propeller_module()
    geo = PropellerGeometry(8, 6, 128, 64)
    train, _ = prop.study_images("samples", 64)
    (tmp_path / "raw").mkdir()
    (tmp_path / "no_maps").mkdir()
    for i, a in enumerate(prop.make_acquisitions(train, geo, [20.0], seed=1000, n_coils=4)):
        np.savez(tmp_path / "raw" / f"scan_{i}.npz", kspace=a["kspace"].numpy() * 1e3, angles=geo.angles().numpy(),
                 sens=a["sens"].numpy())
        np.savez(tmp_path / "no_maps" / f"scan_{i}.npz", kspace=a["kspace"].numpy() * 1e3,
                 angles=geo.angles().numpy(), image_size=64)
    net = {"n_unrolls": 1, "cg_iters": 2, "channels": [8, 16]}
    common = {"max_steps": 6, "lr": 0.003, "network": net, "device": "cpu", "seed": 0}
    study = {"data": "samples", "im_size": 64, "n_blades": 8, "n_lines": 6, "n_readout": 128, "n_coils": 4,
             "snrs": [20.0]}
    sim = prop.pretrain(output_dir=tmp_path / "sim", **study, **common)
    measured = prop.pretrain(data=tmp_path / "raw", output_dir=tmp_path / "measured", **common)
    assert measured["train_images"] == len(train) == 4
    np.testing.assert_allclose(measured["losses"], sim["losses"], rtol=1e-3)
    # without maps in the files they are estimated from the blades: as the study with coil_maps="estimated"
    sim_est = prop.pretrain(output_dir=tmp_path / "sim_est", coil_maps="estimated", **study, **common)
    measured_est = prop.pretrain(data=tmp_path / "no_maps", output_dir=tmp_path / "measured_est", **common)
    np.testing.assert_allclose(measured_est["losses"], sim_est["losses"], rtol=1e-3)
    assert not np.allclose(sim_est["losses"], sim["losses"], rtol=1e-3)


def test_pretrain_on_your_own_measured_blades(tmp_path):
    """``medssl pretrain propeller_mri_reconstruction --data FOLDER``: blades without coil maps, clear errors."""
    from medssl.bundles import run_workflow
    from medssl.errors import InputError, MedsslError

    files = _blade_files(tmp_path / "raw")
    net = {"n_unrolls": 1, "cg_iters": 2, "channels": [8, 16]}
    (out,) = run_workflow("propeller_mri_reconstruction", "pretrain", {
        "data": str(tmp_path / "raw"), "output_dir": str(tmp_path / "run"), "max_steps": 4, "lr": 0.003,
        "device": "cpu", "network": net})
    assert out["train_images"] == 3 and all(math.isfinite(v) for v in out["losses"])
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["geometry"] == {"n_blades": 8, "n_lines": 6, "n_readout": 128, "im_size": 64, "n_coils": 4}
    assert info["train_data"] == "measured k-space" and len(info["estimated_snrs"]) == 3
    # estimated from the blades (simulated at 20; at 64² the readout ends hold some signal, so it reads low)
    assert 12.0 < info["snrs"][0] < 21.0
    assert "scan_" not in json.dumps(info)  # no file names stored
    prop = _propeller_module()
    assert prop.load_noise_matched([tmp_path / "run" / "model.pt"]).snrs == info["snrs"]
    # a file of another protocol, a folder without k-space, supervised training: one clear error each
    other = _blade_files(tmp_path / "other", 1, PropellerGeometry(8, 8, 128, 64))[0]
    with pytest.raises(InputError, match=r"scan_0\.npz: blade pattern 8 x 8 x 128 .* differs from scan_0\.npz's 8 x 6"):
        prop.measured_acquisitions([files[0], other])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no raw k-space files"):
        prop.pretrain(data=tmp_path / "empty", output_dir=tmp_path / "x", max_steps=1)
    with pytest.raises(MedsslError, match="supervised training needs clean images"):
        prop.pretrain(data=tmp_path / "raw", output_dir=tmp_path / "x", method="supervised", max_steps=1)


def test_evaluate_with_estimated_coil_maps_uses_them_for_every_method():
    """``experiment.py --estimated-sens``: each method sees the maps estimated from the blades in use."""
    prop = _propeller_module()
    geo = PropellerGeometry(8, 6, 128, 64)
    train, _ = prop.study_images("samples", 64)
    acqs = prop.make_acquisitions(train[:2], geo, [20.0], seed=5, n_coils=4)
    blades = geo.blades(0.5)
    conv = {"lam": 0.1, "n_iter": 5, "denoiser": "nlm", "strength": 0.8}
    net = {"self_supervised": prop.build_network(n_unrolls=1, cg_iters=2, channels=[4, 8])}
    est = prop.evaluate(acqs, geo, blades, networks=net, conv=conv, estimated_sens=True)["metrics"]
    true = prop.evaluate(acqs, geo, blades, networks=net, conv=conv)["metrics"]
    op = PropellerOperator(geo.trajectory(blades), 64, None)
    by_hand = [{**a, "sens": estimate_sens_from_blades(op, a["kspace"][:, blades].reshape(4, -1))} for a in acqs]
    manual = prop.evaluate(by_hand, geo, blades, networks=net, conv=conv)["metrics"]
    for method in ("gridding", "cg_sense", "cg_sense_denoise", "self_supervised"):
        np.testing.assert_allclose(est[method]["psnr"], manual[method]["psnr"], rtol=1e-6)
        assert not np.allclose(est[method]["psnr"], true[method]["psnr"], rtol=1e-4), method
    # another estimation radius reaches every method too (experiment.py --sens-centre-fraction)
    wide = prop.evaluate(acqs, geo, blades, networks=net, conv=conv, estimated_sens=True,
                         sens_centre_fraction=0.3)["metrics"]
    by_hand = [{**a, "sens": estimate_sens_from_blades(op, a["kspace"][:, blades].reshape(4, -1), centre_fraction=0.3)}
               for a in acqs]
    manual = prop.evaluate(by_hand, geo, blades, networks=net, conv=conv)["metrics"]
    for method in ("gridding", "cg_sense", "cg_sense_denoise", "self_supervised"):
        np.testing.assert_allclose(wide[method]["psnr"], manual[method]["psnr"], rtol=1e-6)
        assert not np.allclose(wide[method]["psnr"], est[method]["psnr"], rtol=1e-4), method

import math

import pytest
import torch

from medssl.networks import (
    AttentivePoolingHead,
    JEPAPredictor,
    LinearHead,
    MAEDecoder,
    SegmentationDecoder,
    ViTEncoder,
    build_sincos_pos_embed,
    create_encoder,
    gather_tokens,
    list_encoders,
    patchify,
    register_encoder,
    unpatchify,
)

SMALL = {"hidden_size": 48, "depth": 2, "num_heads": 3}


def _enc(**kw) -> ViTEncoder:
    return ViTEncoder(**{**SMALL, **kw}).eval()


LAYOUTS = {
    "1d": ({"spatial_dims": 1, "in_channels": 3, "img_size": 64, "patch_size": 8}, (2, 3, 64), (8,)),
    "1d_channel_tokens": (
        {"spatial_dims": 1, "in_channels": 3, "img_size": 64, "patch_size": 8, "channel_tokens": True},
        (2, 3, 64),
        (3, 8),
    ),
    "2d": (
        {"spatial_dims": 2, "in_channels": 2, "img_size": (32, 16), "patch_size": 8},
        (2, 2, 32, 16),
        (4, 2),
    ),
    "3d": (
        {"spatial_dims": 3, "in_channels": 1, "img_size": 16, "patch_size": (4, 8, 8)},
        (2, 1, 16, 16, 16),
        (4, 2, 2),
    ),
    "video": (
        {
            "spatial_dims": 2,
            "in_channels": 3,
            "img_size": 16,
            "patch_size": 8,
            "num_frames": 4,
            "tubelet_size": 2,
        },
        (2, 3, 4, 16, 16),
        (2, 2, 2),
    ),
}


# ---------------------------------------------------------------- registry


def test_registry_names_and_sizes():
    assert {"vit_tiny", "vit_small", "vit_base"} <= set(list_encoders())
    with pytest.raises(ValueError):
        create_encoder("vit_gigantic")


@pytest.mark.parametrize("name,width,heads", [("vit_tiny", 192, 3), ("vit_small", 384, 6), ("vit_base", 768, 12)])
def test_every_registered_size_forward_backward(name, width, heads):
    enc = create_encoder(name, img_size=32, patch_size=16)
    assert enc.hidden_size == width and len(enc.blocks) == 12 and enc.num_heads == heads
    x = torch.randn(2, 1, 32, 32)
    out = enc(x, context_idx=torch.tensor([[0, 2], [1, 3]]))
    assert out.shape == (2, 2, width)
    out.square().mean().backward()
    assert enc.patch_embed.patch_embeddings.weight.grad.abs().sum() > 0
    assert enc.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_register_encoder_decorator():
    @register_encoder("test_vit_micro")
    def _micro(**kw):
        return ViTEncoder(**{"spatial_dims": 2, "in_channels": 1, "img_size": 16, "patch_size": 8, **SMALL, **kw})

    assert "test_vit_micro" in list_encoders()
    assert create_encoder("test_vit_micro", depth=1).num_patches == 4
    with pytest.raises(ValueError):
        register_encoder("test_vit_micro")(_micro)


# ---------------------------------------------------------------- encoder shapes


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_encoder_shapes(layout):
    kw, shape, grid = LAYOUTS[layout]
    enc = _enc(**kw)
    assert enc.grid_size == grid and enc.num_patches == math.prod(grid)
    x = torch.randn(shape)
    assert enc(x).shape == (2, enc.num_patches, 48)
    ctx = torch.tensor([[0, 3], [1, 2]])
    assert enc(x, ctx).shape == (2, 2, 48)


@pytest.mark.parametrize(
    "layout,proj_type",
    [(k, "conv") for k in LAYOUTS] + [(k, "perceptron") for k in ("2d", "3d", "video")],  # 1-D: own Conv1d
)
def test_context_path_matches_full_forward(layout, proj_type):
    # with context_idx the patches are gathered first and projected as a matrix: same map as the conv
    kw, shape, _ = LAYOUTS[layout]
    enc = _enc(**kw, proj_type=proj_type, pos_embed_type="learnable")
    x = torch.randn(shape)
    all_idx = torch.arange(enc.num_patches).expand(2, -1)
    full = enc(x)
    torch.testing.assert_close(enc(x, all_idx), full, rtol=1e-4, atol=1e-5)
    some = torch.tensor([[enc.num_patches - 1, 0], [1, 2]]).sort(1).values
    torch.testing.assert_close(enc.embed(x, some), gather_tokens(enc.embed(x), some), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_context_output_ignores_masked_content(layout):
    kw, shape, _ = LAYOUTS[layout]
    enc = _enc(**kw)
    torch.manual_seed(0)
    x = torch.randn(shape)
    n = enc.num_patches
    ctx = torch.stack([torch.arange(0, n, 2), torch.arange(1, n, 2)])  # the other half is masked
    tgt = torch.stack([torch.arange(1, n, 2), torch.arange(0, n, 2)])
    ref = enc(x, ctx)

    patches = patchify(x, enc)
    changed = patches.clone()
    for b in range(2):
        changed[b, tgt[b]] = torch.randn_like(changed[b, tgt[b]]) * 100
    x2 = unpatchify(changed, enc)
    assert not torch.equal(x, x2)
    assert torch.equal(enc(x, ctx), ref)  # exactly unchanged

    # and the test can fail: touching a context patch changes the output
    changed[0, ctx[0, 0]] += 1.0
    assert not torch.equal(enc(unpatchify(changed, enc), ctx), ref)


# ---------------------------------------------------------------- patchify


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_patchify_round_trip_exact(layout):
    kw, shape, _ = LAYOUTS[layout]
    enc = _enc(**kw)
    x = torch.randn(shape)
    p = patchify(x, enc)
    assert p.shape == (2, enc.num_patches, enc.patch_dim)
    assert torch.equal(unpatchify(p, enc), x)


def test_patchify_hand_computed_2d_and_channel_tokens():
    enc = _enc(spatial_dims=2, in_channels=2, img_size=4, patch_size=2)
    x = torch.arange(32.0).reshape(1, 2, 4, 4)
    p = patchify(x, enc)
    # token 1 = rows 0-1, cols 2-3; pixel order (py, px, c)
    assert p[0, 1].tolist() == [2.0, 18.0, 3.0, 19.0, 6.0, 22.0, 7.0, 23.0]
    sig = _enc(spatial_dims=1, in_channels=2, img_size=4, patch_size=2, channel_tokens=True)
    s = torch.arange(8.0).reshape(1, 2, 4)
    # lead-major: lead 0 tokens [0,1], [2,3], then lead 1 tokens [4,5], [6,7]
    assert patchify(s, sig)[0].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]
    mixed = _enc(spatial_dims=1, in_channels=2, img_size=4, patch_size=2)
    assert patchify(s, mixed)[0].tolist() == [[0.0, 4.0, 1.0, 5.0], [2.0, 6.0, 3.0, 7.0]]


def test_sincos_hand_computed():
    emb = build_sincos_pos_embed((3,), 4)
    # omega = [1, 1/100]; position 2 -> [sin 2, sin .02, cos 2, cos .02]
    expected = torch.tensor([math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)])
    torch.testing.assert_close(emb[2], expected)
    emb2 = build_sincos_pos_embed((2, 3), 8)
    assert emb2.shape == (6, 8)
    torch.testing.assert_close(emb2[5, :4], build_sincos_pos_embed((2,), 4)[1])  # row 1
    torch.testing.assert_close(emb2[5, 4:], emb[2])  # column 2


def test_gather_tokens():
    t = torch.arange(12.0).reshape(2, 3, 2)
    out = gather_tokens(t, torch.tensor([[2], [0]]))
    assert out.tolist() == [[[4.0, 5.0]], [[6.0, 7.0]]]


# ---------------------------------------------------------------- invalid


@pytest.mark.parametrize(
    "kw",
    [
        {"spatial_dims": 2, "in_channels": 1, "img_size": 30, "patch_size": 8},
        {"spatial_dims": 4, "in_channels": 1, "img_size": 16, "patch_size": 8},
        {"spatial_dims": 3, "in_channels": 1, "img_size": 16, "patch_size": 8, "num_frames": 4},
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "img_size": 16,
            "patch_size": 8,
            "num_frames": 5,
            "tubelet_size": 2,
        },
        {"spatial_dims": 2, "in_channels": 1, "img_size": 16, "patch_size": 8, "channel_tokens": True},
        {"spatial_dims": 2, "in_channels": 1, "img_size": 16, "patch_size": 8, "num_heads": 5},
        {"spatial_dims": 2, "in_channels": 1, "img_size": 16, "patch_size": 8, "pos_embed_type": "rope"},
        {"spatial_dims": 2, "in_channels": 1, "img_size": 16, "patch_size": 8, "tubelet_size": 2},
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "img_size": 16,
            "patch_size": 8,
            "hidden_size": 32,
            "num_heads": 4,
        },
    ],
)
def test_invalid_encoder_arguments(kw):
    with pytest.raises(ValueError):
        ViTEncoder(**{**SMALL, **kw})


def test_invalid_inputs():
    enc = _enc(spatial_dims=2, in_channels=1, img_size=16, patch_size=8)
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 1, 16, 8))
    with pytest.raises(ValueError):
        enc(torch.zeros(2, 1, 16, 16), context_idx=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError):
        create_encoder("vit_tiny", img_size=100)  # not divisible by 16


# ---------------------------------------------------------------- predictor / decoder


def test_predictor_shapes_grads_and_noise():
    enc = _enc(**LAYOUTS["video"][0])
    pred = JEPAPredictor(enc.num_patches, 48, predictor_dim=32, depth=2, num_heads=4, grid_size=enc.grid_size)
    x = torch.randn(2, 3, 4, 16, 16)
    ctx = torch.tensor([[0, 1, 2], [5, 6, 7]])
    tgt = torch.tensor([[3, 4], [0, 1]])
    z = enc(x, ctx)
    out = pred(z, ctx, tgt)
    assert out.shape == (2, 2, 48)
    torch.testing.assert_close(pred(z, ctx, tgt), out)
    assert not torch.allclose(pred(z, ctx, tgt, pos_noise_std=0.5), out)
    out.sum().backward()
    assert pred.mask_token.grad.abs().sum() > 0 and enc.norm.weight.grad.abs().sum() > 0
    # a prediction depends on its own position: swap targets -> outputs swap
    swapped = pred(z.detach(), ctx, tgt.flip(1))
    torch.testing.assert_close(swapped, out.detach().flip(1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        JEPAPredictor(10, 48, 32, 1, 4, grid_size=(3, 3))
    with pytest.raises(ValueError):
        pred(z, ctx[:, :2], tgt)


def test_mae_decoder_shape():
    enc = _enc(**LAYOUTS["2d"][0])
    dec = MAEDecoder(enc.num_patches, 48, enc.patch_dim, decoder_dim=32, depth=1, num_heads=4)
    ctx, tgt = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[4, 5, 6], [0, 1, 7]])
    out = dec(enc(torch.randn(2, 2, 32, 16), ctx), ctx, tgt)
    assert out.shape == (2, 3, enc.patch_dim)


# ---------------------------------------------------------------- heads


def test_linear_and_attentive_heads():
    tokens = torch.randn(3, 5, 48, requires_grad=True)
    lin = LinearHead(48, 4)
    assert lin(tokens).shape == (3, 4)
    torch.testing.assert_close(lin(tokens), lin(tokens.mean(1)))
    assert LinearHead(48, 4, pool="max")(tokens).shape == (3, 4)
    att = AttentivePoolingHead(48, 4, num_heads=4)
    out = att(tokens)
    assert out.shape == (3, 4)
    out.sum().backward()
    assert att.query.grad.abs().sum() > 0
    # attentive pooling is invariant to the order of the tokens
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(att(tokens[:, perm]), out, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        LinearHead(48, 4, pool="median")
    with pytest.raises(ValueError):
        AttentivePoolingHead(48, 4, num_heads=5)


def test_linear_head_batch_norm_standardises_pooled_features():
    torch.manual_seed(0)
    feats = torch.randn(16, 48)
    bn = LinearHead(48, 4, batch_norm=True)
    plain = LinearHead(48, 4)
    plain.fc.load_state_dict(bn.fc.state_dict())
    # in training mode the pooled features are standardised per batch: an affine change of the features
    # (a near-constant encoder output plus tiny variations) does not change the logits; without the norm it does
    torch.testing.assert_close(bn(feats * 0.1 + 5.0), bn(feats), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(plain(feats * 0.1 + 5.0), plain(feats), atol=1e-2)
    # in eval mode the running statistics are used, so one record is classified on its own
    bn.eval()
    assert bn(feats[:1]).shape == (1, 4)
    assert bn.norm.running_mean.abs().sum() > 0


@pytest.mark.parametrize(
    "layout,out_shape",
    [
        ("1d", (2, 5, 64)),
        ("1d_channel_tokens", (2, 5, 64)),
        ("2d", (2, 5, 32, 16)),
        ("3d", (2, 5, 16, 16, 16)),
        ("video", (2, 5, 4, 16, 16)),
    ],
)
def test_segmentation_decoder_full_resolution(layout, out_shape):
    kw, shape, _ = LAYOUTS[layout]
    enc = _enc(**kw)
    with torch.no_grad():
        feats = enc(torch.randn(shape))
    dec = SegmentationDecoder(enc, out_channels=5, features=8)
    out = dec(feats)
    assert out.shape == out_shape
    out.mean().backward()
    assert dec.classifier.conv.weight.grad is not None
    assert not any(n.startswith("encoder") for n, _ in dec.named_parameters())
    with pytest.raises(ValueError):
        dec(feats[:, :-1])


def test_every_trainable_parameter_gets_a_gradient():
    """DDP without find_unused_parameters needs this: no dead parameters (e.g. MONAI's cross-attn norm)."""
    from medssl.networks import JEPAPredictor, create_encoder

    enc = create_encoder("vit_tiny", spatial_dims=2, in_channels=1, img_size=32, patch_size=8, depth=2)
    pred = JEPAPredictor(enc.num_patches, enc.hidden_size, predictor_dim=32, depth=1, num_heads=2)
    ctx = torch.arange(0, 16, 2).repeat(2, 1)
    tgt = torch.arange(1, 16, 2).repeat(2, 1)
    out = pred(enc(torch.randn(2, 1, 32, 32), ctx), ctx, tgt)
    out.square().mean().backward()
    dead = [n for m in (enc, pred) for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert dead == []

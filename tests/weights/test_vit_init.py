"""MBT initialised from an ImageNet ViT (`mbt.weights.vit`): every checkpoint format reads to the same weights, and
the initialised MBT computes what the ViT computes (reference C).

The ViT here is tiny and random (D=32, 2 layers, 4 heads, MLP 64, 4x4 patches on 16x16 images -> a 4x4 grid, 10
classes), written in the Flax layout once and converted to each file format by this test's own code. The
reference forward pass below works on the Flax arrays directly, so it shares no code with the converter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mbt import MBT, MBTConfig
from mbt.weights import CheckpointError, ViTWeights, init_from_vit, read_vit_checkpoint
from mbt.weights.vit import convert_pre_linen, inflate_kernel

D, LAYERS, HEADS, MLP, PATCH, GRID, CLASSES = 32, 2, 4, 64, 4, 4, 10
HD = D // HEADS


# ------------------------------------------------------------------------------------------------ a tiny ViT
def make_vit(seed: int = 0, *, cls: bool = True, representation: int | None = None,
             qkv_bias: bool = True) -> dict[str, np.ndarray]:
    """Random ViT parameters in the original vision_transformer npz layout (pre-Linen module numbering)."""
    rng = np.random.default_rng(seed)

    def r(*shape, std=0.1, mean=0.0):
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)

    p = {"embedding/kernel": r(PATCH, PATCH, 3, D), "embedding/bias": r(D),
         "Transformer/posembed_input/pos_embedding": r(1, GRID * GRID + (1 if cls else 0), D, std=0.5),
         "Transformer/encoder_norm/scale": r(D, mean=1.0), "Transformer/encoder_norm/bias": r(D)}
    if cls:
        p["cls"] = r(1, 1, D, std=0.5)
    for i in range(LAYERS):
        b = f"Transformer/encoderblock_{i}/"
        att = b + "MultiHeadDotProductAttention_1/"
        p.update({b + "LayerNorm_0/scale": r(D, mean=1.0), b + "LayerNorm_0/bias": r(D),
                  b + "LayerNorm_2/scale": r(D, mean=1.0), b + "LayerNorm_2/bias": r(D),
                  b + "MlpBlock_3/Dense_0/kernel": r(D, MLP, std=0.2), b + "MlpBlock_3/Dense_0/bias": r(MLP),
                  b + "MlpBlock_3/Dense_1/kernel": r(MLP, D, std=0.2), b + "MlpBlock_3/Dense_1/bias": r(D),
                  att + "out/kernel": r(HEADS, HD, D, std=0.2), att + "out/bias": r(D)})
        for n in ("query", "key", "value"):
            p[att + f"{n}/kernel"] = r(D, HEADS, HD, std=0.2)
            p[att + f"{n}/bias"] = r(HEADS, HD) if qkv_bias else np.zeros((HEADS, HD), np.float32)
    width = D
    if representation:
        p["pre_logits/kernel"], p["pre_logits/bias"] = r(D, representation, std=0.2), r(representation)
        width = representation
    p["head/kernel"], p["head/bias"] = r(width, CLASSES, std=0.3), r(CLASSES)
    return p


# ---- the formats, all from the same arrays
def to_linen(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Linen names (what big_vision writes): modules numbered per class."""
    out = {}
    for k, v in p.items():
        k = (k.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
             .replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0"))
        out[k] = v
    return out


def to_big_vision(p: dict[str, np.ndarray], scanned: bool = False) -> dict[str, np.ndarray]:
    q = to_linen(p)
    q["pos_embedding"] = q.pop("Transformer/posembed_input/pos_embedding")  # big_vision: a top-level param
    if scanned:  # nn.scan: one 'encoderblock' whose arrays carry a leading layer axis
        per_layer = [{k.split("/", 2)[2]: q.pop(k) for k in list(q) if k.startswith(f"Transformer/encoderblock_{i}/")}
                     for i in range(LAYERS)]
        for name in per_layer[0]:
            q[f"Transformer/encoderblock/{name}"] = np.stack([layer[name] for layer in per_layer])
    out = {f"params/{k}": v for k, v in q.items()}
    out["opt/mu/embedding/kernel"] = np.zeros(3, np.float32)  # optimizer state beside the params: ignored
    return out


def to_scenic(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {f"opt/target/{k}": v for k, v in p.items()}
    out["opt/state/step"] = np.array(0)
    out["extra/accum_train_time"] = np.array(1.0)
    return out


def to_timm(p: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """timm's VisionTransformer state dict, converted here independently of mbt.weights."""
    t = lambda a: torch.tensor(np.ascontiguousarray(a))
    sd = {"patch_embed.proj.weight": t(p["embedding/kernel"].transpose(3, 2, 0, 1)),
          "patch_embed.proj.bias": t(p["embedding/bias"]),
          "pos_embed": t(p["Transformer/posembed_input/pos_embedding"]),
          "norm.weight": t(p["Transformer/encoder_norm/scale"]), "norm.bias": t(p["Transformer/encoder_norm/bias"]),
          "head.weight": t(p["head/kernel"].T), "head.bias": t(p["head/bias"])}
    if "cls" in p:
        sd["cls_token"] = t(p["cls"])
    if "pre_logits/kernel" in p:
        sd["pre_logits.fc.weight"], sd["pre_logits.fc.bias"] = t(p["pre_logits/kernel"].T), t(p["pre_logits/bias"])
    for i in range(LAYERS):
        b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = b + "MultiHeadDotProductAttention_1/"
        sd[o + "norm1.weight"], sd[o + "norm1.bias"] = t(p[b + "LayerNorm_0/scale"]), t(p[b + "LayerNorm_0/bias"])
        sd[o + "norm2.weight"], sd[o + "norm2.bias"] = t(p[b + "LayerNorm_2/scale"]), t(p[b + "LayerNorm_2/bias"])
        sd[o + "attn.qkv.weight"] = t(np.concatenate([p[att + f"{n}/kernel"].reshape(D, D).T
                                                      for n in ("query", "key", "value")]))
        sd[o + "attn.qkv.bias"] = t(np.concatenate([p[att + f"{n}/bias"].reshape(D)
                                                    for n in ("query", "key", "value")]))
        sd[o + "attn.proj.weight"] = t(p[att + "out/kernel"].reshape(D, D).T)
        sd[o + "attn.proj.bias"] = t(p[att + "out/bias"])
        for j in (0, 1):
            sd[o + f"mlp.fc{j + 1}.weight"] = t(p[b + f"MlpBlock_3/Dense_{j}/kernel"].T)
            sd[o + f"mlp.fc{j + 1}.bias"] = t(p[b + f"MlpBlock_3/Dense_{j}/bias"])
    return sd


def write_all_formats(p: dict[str, np.ndarray], tmp_path) -> dict[str, object]:
    files = {"vision_transformer": tmp_path / "ViT-tiny.npz", "big_vision": tmp_path / "bv.npz",
             "big_vision_scanned": tmp_path / "bv_scan.npz", "scenic": tmp_path / "scenic.npz",
             "timm_safetensors": tmp_path / "model.safetensors", "timm_pth": tmp_path / "vit.pth",
             "timm_wrapped": tmp_path / "ckpt.pt"}
    np.savez(files["vision_transformer"], **p)
    np.savez(files["big_vision"], **to_big_vision(p))
    np.savez(files["big_vision_scanned"], **to_big_vision(p, scanned=True))
    np.savez(files["scenic"], **to_scenic(p))
    sd = to_timm(p)
    save_file(sd, str(files["timm_safetensors"]))
    torch.save(sd, files["timm_pth"])
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, files["timm_wrapped"])
    return files


@pytest.fixture(scope="module")
def vit_params() -> dict[str, np.ndarray]:
    return make_vit(0)


@pytest.fixture(scope="module")
def vit_file(vit_params, tmp_path_factory):
    path = tmp_path_factory.mktemp("vit") / "ViT-tiny.npz"
    np.savez(path, **vit_params)
    return path


# ---- the reference ViT forward (Flax semantics: pre-LN, LayerNorm eps 1e-6, tanh GELU), float64
def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def vit_patch_tokens(p, image: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) -> (B, gh * gw, D): the 'embedding' conv (kernel (ph, pw, C, D), stride = kernel), row-major."""
    k = _t(p["embedding/kernel"])
    ph, pw, c, d = k.shape
    b, h, w, _ = image.shape
    x = image.double().reshape(b, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c) @ k.reshape(-1, d) + _t(p["embedding/bias"])


def vit_forward(p, image: torch.Tensor) -> torch.Tensor:
    """Logits of the ViT classifier `p` (original npz names) on images (B, H, W, 3)."""
    ln = lambda x, name: F.layer_norm(x, (D,), _t(p[name + "/scale"]), _t(p[name + "/bias"]), eps=1e-6)
    x = vit_patch_tokens(p, image)
    if "cls" in p:
        x = torch.cat([_t(p["cls"]).expand(x.shape[0], -1, -1), x], dim=1)
    x = x + _t(p["Transformer/posembed_input/pos_embedding"])
    for i in range(LAYERS):
        b = f"Transformer/encoderblock_{i}/"
        att = b + "MultiHeadDotProductAttention_1/"
        y = ln(x, b + "LayerNorm_0")
        q, k, v = (torch.einsum("bnd,dhk->bhnk", y, _t(p[att + f"{n}/kernel"])) + _t(p[att + f"{n}/bias"])[:, None]
                   for n in ("query", "key", "value"))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD), dim=-1) @ v  # (B, H, N, hd)
        x = x + torch.einsum("bhnk,hkd->bnd", a, _t(p[att + "out/kernel"])) + _t(p[att + "out/bias"])
        y = ln(x, b + "LayerNorm_2")
        y = F.gelu(y @ _t(p[b + "MlpBlock_3/Dense_0/kernel"]) + _t(p[b + "MlpBlock_3/Dense_0/bias"]),
                   approximate="tanh")
        x = x + y @ _t(p[b + "MlpBlock_3/Dense_1/kernel"]) + _t(p[b + "MlpBlock_3/Dense_1/bias"])
    x = ln(x, "Transformer/encoder_norm")
    x = x[:, 0] if "cls" in p else x.mean(dim=1)
    if "pre_logits/kernel" in p:
        x = torch.tanh(x @ _t(p["pre_logits/kernel"]) + _t(p["pre_logits/bias"]))
    return x @ _t(p["head/kernel"]) + _t(p["head/bias"])


# ---- MBT configs
def mbt_config(**overrides) -> MBTConfig:
    base = dict(modality_fusion=("spectrogram",), fusion_layer=0, use_bottleneck=False, hidden_size=D,
                num_layers=LAYERS, num_heads=HEADS, mlp_dim=MLP, classifier="token", num_classes=CLASSES,
                stochastic_droplayer_rate=0.0, spectrogram_patch_size=(PATCH, PATCH), spectrogram_shape=(16, 16),
                spectrogram_channels=3, rgb_patch_size=(2, PATCH, PATCH), num_frames=4, image_size=(16, 16))
    return MBTConfig(**{**base, **overrides})


def av_config(**overrides) -> MBTConfig:
    return mbt_config(**{**dict(modality_fusion=("spectrogram", "rgb"), fusion_layer=1, use_bottleneck=True,
                                n_bottlenecks=4, spectrogram_channels=1), **overrides})


def image_batch(seed: int = 5, batch: int = 2, size=(16, 16)) -> torch.Tensor:
    return torch.randn((batch, *size, 3), generator=torch.Generator().manual_seed(seed))  # (B, H, W, 3)


def zoom(grid: np.ndarray, size) -> np.ndarray:
    """Scenic's resize: scipy.ndimage.zoom, order 1, on the (g, g, D) grid."""
    g = grid.shape[0]
    return scipy.ndimage.zoom(grid, (size[0] / g, size[1] / g, 1), order=1)


def vit_grid(p) -> np.ndarray:
    return p["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(GRID, GRID, D)


# ------------------------------------------------------------------------------------------ 1. reading
def test_every_format_reads_to_the_same_weights(vit_params, tmp_path):
    files = write_all_formats(vit_params, tmp_path)
    reference = read_vit_checkpoint(files["vision_transformer"])
    ref = reference.state_dict()
    # The expected torch layout, from this test's own conversion.
    timm = to_timm(vit_params)
    assert torch.equal(ref["patch_weight"], timm["patch_embed.proj.weight"])
    assert torch.equal(ref["blocks.1.attn.qkv.weight"], timm["blocks.1.attn.qkv.weight"])
    assert torch.equal(ref["posemb_cls"], timm["pos_embed"][:, :1])
    assert torch.equal(ref["posemb_grid"], timm["pos_embed"][0, 1:].reshape(GRID, GRID, D))
    assert torch.equal(ref["head.weight"], timm["head.weight"])
    assert (reference.hidden_size, reference.num_layers, reference.num_heads, reference.mlp_dim,
            reference.patch_size, reference.grid_size, reference.num_classes) == (D, LAYERS, HEADS, MLP,
                                                                                  (PATCH, PATCH), (GRID, GRID),
                                                                                  CLASSES)
    expected_format = {"vision_transformer": "vision_transformer", "big_vision": "big_vision",
                       "big_vision_scanned": "big_vision", "scenic": "vision_transformer"}
    for name, path in files.items():
        vit = read_vit_checkpoint(path)
        assert vit.format == expected_format.get(name, "timm"), name
        assert vit.source == str(path)
        assert vit.num_heads == (None if vit.format == "timm" else HEADS)
        got = vit.state_dict()
        assert sorted(got) == sorted(ref), name
        for k in ref:
            assert got[k].dtype == torch.float32 and torch.equal(got[k], ref[k]), (name, k)


def test_convert_pre_linen_renumbers_per_class_in_natural_order():
    tree = {"encoderblock_10": {}, "encoderblock_2": {}, "encoderblock_9": {},
            "blk": {"LayerNorm_0": 1, "MultiHeadDotProductAttention_1": 2, "LayerNorm_2": 3, "MlpBlock_3": 4}}
    out = convert_pre_linen(tree)
    assert list(out) == ["blk", "encoderblock_0", "encoderblock_1", "encoderblock_2"]
    assert out["blk"] == {"LayerNorm_0": 1, "MultiHeadDotProductAttention_0": 2, "LayerNorm_1": 3, "MlpBlock_0": 4}


def test_class_token_without_position_reads_as_zero_position(vit_params, tmp_path):
    # timm no_embed_class and real big_vision: the class token is added after the position embedding.
    sd = to_timm(vit_params)
    sd["pos_embed"] = sd["pos_embed"][:, 1:].clone()
    save_file(sd, str(tmp_path / "noembed.safetensors"))
    bv = to_big_vision(vit_params)
    bv["params/pos_embedding"] = bv["params/pos_embedding"][:, 1:]
    np.savez(tmp_path / "bv_real.npz", **bv)
    for path in (tmp_path / "noembed.safetensors", tmp_path / "bv_real.npz"):
        vit = read_vit_checkpoint(path)
        assert torch.equal(vit.posemb_cls, torch.zeros(1, 1, D))
        assert torch.equal(vit.posemb_grid, torch.from_numpy(vit_grid(vit_params)))
        assert any("no class-token position" in n for n in vit.notes)


def test_timm_variants_gap_fc_norm_and_qkv_without_bias(vit_params, tmp_path):
    sd = to_timm(make_vit(1, cls=False))
    sd["fc_norm.weight"], sd["fc_norm.bias"] = sd.pop("norm.weight"), sd.pop("norm.bias")
    for i in range(LAYERS):
        del sd[f"blocks.{i}.attn.qkv.bias"]
    torch.save({"state_dict": sd}, tmp_path / "gap.pth")
    vit = read_vit_checkpoint(tmp_path / "gap.pth")
    assert vit.cls is None and vit.posemb_cls is None and vit.grid_size == (GRID, GRID)
    assert torch.equal(vit.blocks[0]["attn.qkv.bias"], torch.zeros(3 * D))
    assert torch.equal(vit.encoder_norm["weight"], sd["fc_norm.weight"])
    assert any("fc_norm" in n for n in vit.notes)


# ------------------------------------------------------------------------------------------ 2. same logits as the ViT
@pytest.mark.parametrize("representation", [None, 24])
def test_spectrogram_mbt_computes_the_vit(representation, tmp_path):
    p = make_vit(2, representation=representation)
    np.savez(tmp_path / "vit.npz", **p)
    image = image_batch()
    want = vit_forward(p, image)  # (B, C)
    for channels in (3, 1):
        model = MBT(mbt_config(spectrogram_channels=channels, representation_size=representation)).eval()
        init_from_vit(model, tmp_path / "vit.npz", restore_output_proj=True)
        spec = image.permute(0, 3, 1, 2)  # (B, 3, time=H, mel=W)
        if channels == 1:  # the same image in all 3 channels for the ViT; the MBT sees it once
            spec = spec[:, :1]
            want = vit_forward(p, spec.permute(0, 2, 3, 1).expand(-1, -1, -1, 3))
        with torch.no_grad():
            got = model({"spectrogram": spec}).logits
        assert (got.double() - want).abs().max() < 1e-5, channels


def test_pooled_head_mbt_computes_a_gap_vit(tmp_path):
    # A gap ViT (no class token) in big_vision layout: normalise all tokens, average, classify = MBT 'gap'.
    p = make_vit(3, cls=False)
    np.savez(tmp_path / "gap.npz", **to_big_vision(p))
    model = MBT(mbt_config(classifier="gap")).eval()
    init_from_vit(model, tmp_path / "gap.npz", restore_output_proj=True)
    image = image_batch()
    with torch.no_grad():
        got = model({"spectrogram": image.permute(0, 3, 1, 2)}).logits
    assert (got.double() - vit_forward(p, image)).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------ 3. rgb tubelets
@pytest.mark.parametrize("kernel_init", ["central_frame", "average"])
def test_rgb_tubelets_embed_like_the_vit(kernel_init, vit_params, vit_file):
    model = MBT(mbt_config(modality_fusion=("rgb",))).eval()  # 4 frames, tubelets (2, 4, 4): 2 x 4 x 4 tokens
    init_from_vit(model, vit_file, kernel_init=kernel_init)
    image = image_batch(seed=7)  # (B, H, W, 3)
    frame = image.permute(0, 3, 1, 2)  # (B, 3, H, W)
    video = frame[:, :, None].repeat(1, 1, 4, 1, 1)  # static video (B, 3, T, H, W)
    if kernel_init == "central_frame":  # only frame t=1 of each 2-frame tubelet counts: make the others noise
        video[:, :, 0::2] = torch.randn(video[:, :, 0::2].shape, generator=torch.Generator().manual_seed(8)) * 5
    with torch.no_grad():
        tokens = model.tokenizers["rgb"].patch_embed(video)  # (B, 2 * 16, D)
    want = vit_patch_tokens(vit_params, image)  # (B, 16, D)
    for t in range(2):
        assert (tokens.view(2, 2, GRID * GRID, D)[:, t].double() - want).abs().max() < 1e-5
    pos = model.tokenizers["rgb"].pos_embedding.detach()[0]  # (1 + 2 * 16, D)
    full = torch.from_numpy(vit_params["Transformer/posembed_input/pos_embedding"][0])
    assert torch.equal(pos[0], full[0])
    for t in range(2):
        assert torch.equal(pos[1:].view(2, GRID * GRID, D)[t], full[1:])
    assert torch.equal(model.tokenizers["rgb"].cls.detach(), torch.from_numpy(vit_params["cls"]))


def test_kernel_inflation_rules():
    w = torch.randn(D, 3, PATCH, PATCH)
    central = inflate_kernel(w, 3, "central_frame")
    assert torch.equal(central[:, :, 1], w) and not central[:, :, 0].any() and not central[:, :, 2].any()
    assert torch.equal(inflate_kernel(w, 1, "average"), w[:, :, None])
    assert torch.allclose(inflate_kernel(w, 4, "average").sum(2), w, atol=1e-6)
    assert torch.equal(inflate_kernel(w, 2, "central_frame_initializer"), inflate_kernel(w, 2, "central_frame"))
    # Approximate rank pooling (Bilen et al. eq. 3): alpha_t = 2(T - t + 1) - (T + 1)(H_T - H_{t-1}), over T.
    t = 3
    harmonic = [0.0, 1.0, 1.5, 1.5 + 1 / 3]
    alpha = [(2 * (t - k + 1) - (t + 1) * (harmonic[t] - harmonic[k - 1])) / t for k in (1, 2, 3)]
    arp = inflate_kernel(w, t, "average_arp")
    for k in range(t):
        assert torch.allclose(arp[:, :, k], w * alpha[k], atol=1e-6)


def test_temporal_sampling_gets_the_2d_kernel_and_tiled_positions(vit_params, vit_file):
    cfg = mbt_config(modality_fusion=("rgb",), temporal_encoding="temporal_sampling", n_sampled_frames=3,
                     rgb_patch_size=(1, PATCH, PATCH), num_frames=8)
    model = MBT(cfg)
    init_from_vit(model, vit_file)
    vit = read_vit_checkpoint(vit_file)
    assert torch.equal(model.tokenizers["rgb"].patch_embed.proj.weight.detach(), vit.patch_weight)
    pos = model.tokenizers["rgb"].pos_embedding.detach()[0, 1:].view(3, GRID * GRID, D)
    for t in range(3):
        assert torch.equal(pos[t], vit.posemb_grid.reshape(-1, D))


# ------------------------------------------------------------------------------------------ 4. resizing
def test_position_embeddings_are_resized_like_scipy_zoom(vit_params, vit_file):
    grid = vit_grid(vit_params)
    cls_pos = torch.from_numpy(vit_params["Transformer/posembed_input/pos_embedding"][0, 0])
    spec = MBT(mbt_config(spectrogram_shape=(40, 8)))  # grid (10, 2): time x mel
    init_from_vit(spec, vit_file)
    pos = spec.tokenizers["spectrogram"].pos_embedding.detach()[0]
    assert torch.equal(pos[0], cls_pos)
    np.testing.assert_allclose(pos[1:].numpy(), zoom(grid, (10, 2)).reshape(-1, D), atol=1e-6, rtol=0)

    rgb = MBT(mbt_config(modality_fusion=("rgb",), image_size=(24, 20)))  # per frame (6, 5), 2 tubelets
    init_from_vit(rgb, vit_file)
    pos = rgb.tokenizers["rgb"].pos_embedding.detach()[0]
    want = zoom(grid, (6, 5)).reshape(-1, D)
    for t in range(2):
        np.testing.assert_allclose(pos[1:].view(2, 30, D)[t].numpy(), want, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ 5. bottleneck
def test_bottleneck_from_the_position_embedding(vit_params, vit_file):
    grid = vit_grid(vit_params)
    cls_pos = vit_params["Transformer/posembed_input/pos_embedding"][0, :1]
    for n, (gh, gw) in ((4, (2, 2)), (6, (2, 3))):
        model = MBT(av_config(n_bottlenecks=n))
        init_from_vit(model, vit_file)
        want = np.concatenate([cls_pos, zoom(grid, (gh, gw)).reshape(-1, D)])
        np.testing.assert_allclose(model.bottleneck.detach()[0].numpy(), want, atol=1e-6, rtol=0)

    gap = MBT(av_config(classifier="gap", n_bottlenecks=4))
    init_from_vit(gap, vit_file)
    np.testing.assert_allclose(gap.bottleneck.detach()[0].numpy(), zoom(grid, (2, 2)).reshape(-1, D),
                               atol=1e-6, rtol=0)

    with pytest.raises(CheckpointError, match=r"n_bottlenecks=5 .*2x2.*1, 2, 3, 4, 6, 8, 9.*init_bottleneck=False"):
        init_from_vit(MBT(av_config(n_bottlenecks=5)), vit_file)
    model = MBT(av_config(n_bottlenecks=5))
    before = model.bottleneck.detach().clone()
    init_from_vit(model, vit_file, init_bottleneck=False)
    assert torch.equal(model.bottleneck.detach(), before)


# ------------------------------------------------------------------------------------------ 6. blocks, norms, CLS
@pytest.mark.parametrize("share_encoder", [False, True])
def test_blocks_norm_and_cls_tokens(share_encoder, vit_file):
    vit = read_vit_checkpoint(vit_file)
    model = MBT(av_config(share_encoder=share_encoder))
    report = init_from_vit(model, vit)
    streams = ["shared"] if share_encoder else ["spectrogram", "rgb"]
    assert sorted(model.encoders) == sorted(streams)
    state = model.state_dict()
    for s in streams:
        for i in range(LAYERS):
            for k, v in vit.blocks[i].items():
                assert torch.equal(state[f"encoders.{s}.{i}.{k}"], v), (s, i, k)
    assert torch.equal(state["encoder_norm.weight"], vit.encoder_norm["weight"])
    assert torch.equal(state["encoder_norm.bias"], vit.encoder_norm["bias"])
    assert torch.equal(state["tokenizers.rgb.cls"], vit.cls)
    # Scenic leaves the spectrogram CLS of a two-modality model at its zero init (reference H.6).
    assert not state["tokenizers.spectrogram.cls"].any()
    assert "tokenizers.spectrogram.cls" in report.untouched and "tokenizers.rgb.cls" in report.loaded
    # The spectrogram kernel of a 1-channel model is the ViT kernel summed over its 3 input channels.
    assert torch.allclose(state["tokenizers.spectrogram.patch_embed.proj.weight"],
                          vit.patch_weight.sum(1, keepdim=True), atol=0, rtol=0)

    init_from_vit(model, vit, restore_spectrogram_cls=True)
    assert torch.equal(model.state_dict()["tokenizers.spectrogram.cls"], vit.cls)


def test_spectrogram_cls_restored_in_a_spectrogram_only_model(vit_file):
    vit = read_vit_checkpoint(vit_file)
    model = MBT(mbt_config())
    init_from_vit(model, vit)
    assert torch.equal(model.tokenizers["spectrogram"].cls.detach(), vit.cls)
    forced_off = MBT(mbt_config())
    init_from_vit(forced_off, vit, restore_spectrogram_cls=False)
    assert not forced_off.tokenizers["spectrogram"].cls.detach().any()


# ------------------------------------------------------------------------------------------ 7. errors
def test_architecture_mismatches_are_refused_and_leave_the_model_alone(vit_file):
    name = str(vit_file)
    cases = [(dict(num_layers=3, fusion_layer=0), r"depth \(layers\) is 2 but the model's is 3"),
             (dict(hidden_size=48), r"width \(hidden size\) is 32 but the model's is 48"),
             (dict(mlp_dim=128), r"MLP width is 64 but the model's is 128"),
             (dict(num_heads=2), r"4 heads but the model has 2"),
             (dict(spectrogram_patch_size=(8, 8)), r"patch is 4x4 but the model's spectrogram patch is 8x8")]
    for overrides, message in cases:
        model = MBT(mbt_config(**overrides))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError, match=message) as e:
            init_from_vit(model, vit_file)
        assert name in str(e.value)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gap_vit_cannot_fill_a_token_model(tmp_path):
    save_file(to_timm(make_vit(1, cls=False)), str(tmp_path / "gap.safetensors"))
    with pytest.raises(CheckpointError, match=r"gap\.safetensors.*no class token.*classifier='gap'"):
        init_from_vit(MBT(mbt_config()), tmp_path / "gap.safetensors")


def test_unsupported_timm_feature_names_the_key(vit_params, tmp_path):
    sd = to_timm(vit_params)
    sd["blocks.0.ls1.gamma"] = torch.ones(D)
    torch.save(sd, tmp_path / "ls.pth")
    with pytest.raises(CheckpointError, match=r"ls\.pth: unsupported ViT feature: key 'blocks\.0\.ls1\.gamma' "
                                              r"\(layer scale"):
        read_vit_checkpoint(tmp_path / "ls.pth")


class _Payload:
    """Unpickling this would create a file: weights_only must refuse it before any code runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_with_code_are_refused_without_running_it(vit_params, tmp_path):
    marker = tmp_path / "pwned"
    sd = dict(to_timm(vit_params))
    sd["pos_embed"] = _Payload(marker)
    torch.save(sd, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused.*weights_only"):
        read_vit_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_npz_with_pickled_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    np.savez(tmp_path / "evil.npz", **{"embedding/kernel": payload})
    with pytest.raises(CheckpointError, match=r"evil\.npz: not a readable npz.*allow_pickle"):
        read_vit_checkpoint(tmp_path / "evil.npz")
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a ViT checkpoint"):
        read_vit_checkpoint(text)
    with pytest.raises(CheckpointError, match=r"missing\.npz: no such file"):
        read_vit_checkpoint(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match=r"missing\.npz: no such file"):
        init_from_vit(MBT(mbt_config()), tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"other\.npz: not a ViT checkpoint"):
        read_vit_checkpoint(tmp_path / "other.npz")


def test_inconsistent_shapes_are_refused(vit_params, tmp_path):
    bad = dict(vit_params)
    bad["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"] = np.zeros(D + 1, np.float32)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(CheckpointError, match=r"bad\.npz: inconsistent ViT shapes.*block 1 mlp\.fc2\.bias"):
        read_vit_checkpoint(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------------ 8. report
def test_report(vit_file):
    model = MBT(av_config())
    report = init_from_vit(model, vit_file)
    assert "head" in report.dropped and "restore_output_proj=False" in report.dropped["head"]
    assert not model.output_projection.weight.any() and not model.output_projection.bias.any()
    state = model.state_dict()
    assert sorted(report.loaded + report.untouched) == sorted(state)
    assert sorted(report.untouched) == ["output_projection.bias", "output_projection.weight",
                                        "tokenizers.spectrogram.cls"]
    text = report.summary()
    assert str(vit_file) in text and "not used: head" in text and "tokenizers.spectrogram.cls" in text
    assert isinstance(read_vit_checkpoint(vit_file), ViTWeights)

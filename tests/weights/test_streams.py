"""Each stream from its own pretrained encoder (`mbt.weights.streams`, `mbt.weights.ast`): an ImageNet ViT, an AST
checkpoint or a stream of an mbt model directory; and the spectrogram patch kernel training as Scenic's.

AST state dicts are written here in AST's own layout (a (freq, time) input, a frequency-major patch grid, class and
distillation tokens), and the reference computations (AST's patch embedding, Scenic's 3-channel update) are
written here too, sharing no code with the readers.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from mbt import MBT, MBTConfig
from mbt.errors import CheckpointError, ConfigError
from mbt.weights import init_from_vit, init_streams, read_ast_checkpoint, read_encoder, read_vit_checkpoint

from .test_vit_init import D, HEADS, LAYERS, MLP, PATCH, make_vit

# A tiny AST: D=32, 2 layers (as the tiny ViT), 4x4 patches without overlap on a spectrogram of 8 mel bins x 24
# frames: AST's grid is 2 (freq) x 6 (time), mbt's 6 (time) x 2 (mel).
MEL, TIME = 8, 24
F_PATCHES, T_PATCHES = MEL // PATCH, TIME // PATCH


def make_ast(seed: int = 0, f: int = F_PATCHES, t: int = T_PATCHES, patch: int = PATCH, d: int = D,
             layers: int = LAYERS, mlp: int = MLP) -> dict[str, torch.Tensor]:
    """A random AST state dict as the released files hold it: DataParallel's 'module.' prefix, the DeiT under 'v.',
    AST's mlp_head beside it."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, std=0.3: torch.randn(*shape, generator=g) * std  # noqa: E731
    v = {"cls_token": r(1, 1, d), "dist_token": r(1, 1, d), "pos_embed": r(1, 2 + f * t, d),
         "patch_embed.proj.weight": r(d, 1, patch, patch), "patch_embed.proj.bias": r(d),
         "norm.weight": 1 + r(d), "norm.bias": r(d), "head.weight": r(1000, d), "head.bias": r(1000),
         "head_dist.weight": r(1000, d), "head_dist.bias": r(1000)}
    for i in range(layers):
        for name, shape in (("norm1.weight", (d,)), ("norm1.bias", (d,)), ("attn.qkv.weight", (3 * d, d)),
                            ("attn.qkv.bias", (3 * d,)), ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
                            ("norm2.weight", (d,)), ("norm2.bias", (d,)), ("mlp.fc1.weight", (mlp, d)),
                            ("mlp.fc1.bias", (mlp,)), ("mlp.fc2.weight", (d, mlp)), ("mlp.fc2.bias", (d,))):
            v[f"blocks.{i}.{name}"] = r(*shape) + (1 if name.startswith("norm") and name.endswith("weight") else 0)
    state = {f"module.v.{k}": x for k, x in v.items()}
    state.update({"module.mlp_head.0.weight": torch.ones(d), "module.mlp_head.0.bias": torch.zeros(d),
                  "module.mlp_head.1.weight": r(527, d), "module.mlp_head.1.bias": r(527)})
    return state


def config(**overrides) -> MBTConfig:
    base = dict(modality_fusion=("spectrogram", "rgb"), fusion_layer=LAYERS, use_bottleneck=True, n_bottlenecks=4,
                hidden_size=D, num_layers=LAYERS, num_heads=HEADS, mlp_dim=MLP, classifier="token", num_classes=5,
                stochastic_droplayer_rate=0.0, spectrogram_patch_size=(PATCH, PATCH), spectrogram_shape=(TIME, MEL),
                spectrogram_channels=1, rgb_patch_size=(2, PATCH, PATCH), num_frames=4, image_size=(16, 16))
    return MBTConfig(**{**base, **overrides})


def randomised(model: MBT, seed: int) -> MBT:
    """Every tensor random (class tokens, positions and heads start at zero otherwise), so copies are visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] == D else 0.0))
    return model


def inputs(cfg: MBTConfig, seed: int = 3, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(batch, 3, cfg.num_frames, *cfg.image_size, generator=g),
            "spectrogram": torch.randn(batch, 1, *cfg.spectrogram_shape, generator=g)}


def encoder_outputs(model: MBT, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's tokens as they enter the final LayerNorm (a hook on its input), keyed by modality."""
    seen = {}
    hook = model.encoder_norm.register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        out = model({m: x[m] for m in model.config.modality_fusion})
    hook.remove()
    return {m: seen["x"][:, s] for m, s in out.token_slices.items()}


# ------------------------------------------------------------------------------------------------ AST
def ast_patch_tokens(state: dict[str, torch.Tensor], spec: torch.Tensor) -> torch.Tensor:
    """AST's own embedding (ASTModel.forward up to the position embedding, without its two tokens), on a
    spectrogram (B, time, mel), returned in mbt's token order (time-major) to compare: (B, T*F, D)."""
    x = spec.unsqueeze(1).transpose(2, 3)  # (B, 1, freq, time), as AST feeds it
    w, b = state["module.v.patch_embed.proj.weight"], state["module.v.patch_embed.proj.bias"]
    y = F.conv2d(x, w, b, stride=PATCH)  # (B, D, F, T)
    pos = state["module.v.pos_embed"][0, 2:].reshape(y.shape[2], y.shape[3], -1)  # (F, T, D), frequency-major
    y = y.permute(0, 2, 3, 1) + pos  # (B, F, T, D)
    return y.transpose(1, 2).reshape(y.shape[0], -1, y.shape[-1])  # (B, T, F, D) -> time-major tokens


@pytest.mark.parametrize("channels", [1, 3])
def test_ast_embeds_the_spectrogram_as_ast_does(channels, tmp_path):
    state = make_ast(0)
    torch.save(state, tmp_path / "ast.pth")
    model = MBT(config(modality_fusion=("spectrogram",), spectrogram_channels=channels)).eval()
    vit = read_ast_checkpoint(tmp_path / "ast.pth", freq_patches=F_PATCHES)  # a grid this small needs F given
    assert vit.format == "ast" and vit.grid_size == (T_PATCHES, F_PATCHES)
    report = init_streams(model, {"spectrogram": vit})
    spec = torch.randn(2, TIME, MEL, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.tokenizers["spectrogram"](spec[:, None])  # (B, 1 + T*F, D)
    torch.testing.assert_close(ours[:, 1:], ast_patch_tokens(state, spec), rtol=0, atol=2e-5)
    v = lambda k: state[f"module.v.{k}"]  # noqa: E731
    pos = v("pos_embed")
    torch.testing.assert_close(ours[:, 0], ((v("cls_token") + v("dist_token")) / 2 + (pos[:, :1] + pos[:, 1:2]) / 2)
                               [0].expand(2, -1), rtol=0, atol=1e-6)
    sd = model.state_dict()
    for i in range(LAYERS):
        for k in ("attn.qkv.weight", "attn.proj.bias", "mlp.fc1.weight", "norm2.weight"):
            assert torch.equal(sd[f"encoders.spectrogram.{i}.{k}"], v(f"blocks.{i}.{k}"))
    assert torch.equal(sd["encoder_norm.weight"], v("norm.weight"))
    kernel = sd["tokenizers.spectrogram.patch_embed.proj.weight"]  # (D, C, time, mel)
    ast_kernel = v("patch_embed.proj.weight").transpose(2, 3)  # AST's (D, 1, freq, time) -> (D, 1, time, mel)
    if channels == 1:
        assert torch.equal(kernel, ast_kernel)
    else:  # spread over the 3 copies of the input
        torch.testing.assert_close(kernel, ast_kernel.expand(-1, 3, -1, -1) / 3, rtol=0, atol=0)
    text = report.summary()
    assert "spectrogram stream (tokenizer, 2 blocks)" in text and "distillation" in text and "fbank" in text
    assert ("learns 3x faster" in text) == (channels == 3)
    assert sorted(report.untouched) == ["output_projection.bias", "output_projection.weight"]


def test_released_ast_layout_infers_its_grid_and_is_resampled(tmp_path):
    """The released AST: 128 mel bins x 1024 frames in 16x16 patches at stride 10, a 12 x 101 grid. Its positions are
    resampled to the model's (time, mel) grid as Scenic resizes ViT grids (scipy zoom, order 1)."""
    state = make_ast(1, f=12, t=101, patch=16, d=8, layers=1, mlp=16)
    torch.save(state, tmp_path / "audioset_10_10_0.4593.pth")
    vit = read_ast_checkpoint(tmp_path / "audioset_10_10_0.4593.pth")
    grid = state["module.v.pos_embed"][0, 2:].reshape(12, 101, 8)
    assert torch.equal(vit.posemb_grid, grid.transpose(0, 1))
    cfg = MBTConfig(modality_fusion=("spectrogram",), hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16,
                    num_classes=3, spectrogram_shape=(800, 128), spectrogram_channels=1, fusion_layer=0)
    model = MBT(cfg)
    init_streams(model, {"spectrogram": tmp_path / "audioset_10_10_0.4593.pth"})
    want = scipy.ndimage.zoom(grid.transpose(0, 1).double().numpy(), (50 / 101, 8 / 12, 1), order=1)
    got = model.tokenizers["spectrogram"].pos_embedding[0, 1:].reshape(50, 8, 8)
    np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-6)
    with pytest.raises(CheckpointError, match="AST .*spectrogram stream"):
        read_vit_checkpoint(tmp_path / "audioset_10_10_0.4593.pth")
    with pytest.raises(CheckpointError, match="initialises the spectrogram stream, not rgb"):
        read_encoder(tmp_path / "audioset_10_10_0.4593.pth", "rgb")
    torch.save(make_ast(2, f=5, t=5), tmp_path / "ast_small.pth")
    with pytest.raises(CheckpointError, match="cannot tell the AST's frequency patch rows"):
        read_ast_checkpoint(tmp_path / "ast_small.pth")


# ------------------------------------------------------------------------------------------------ mbt models
def unimodal_dirs(tmp_path, **overrides) -> dict[str, object]:
    """A random video-only and audio-only model (the demo's `video` and `audio`), saved as model directories."""
    out = {}
    for seed, (name, m) in enumerate((("video", "rgb"), ("audio", "spectrogram"))):
        model = randomised(MBT(config(modality_fusion=(m,), fusion_layer=0, **overrides)), seed)
        out[m] = model.eval()
        model.save_pretrained(tmp_path / name)
    return out


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_late_fusion_from_two_unimodal_models_computes_each_source(classifier, tmp_path):
    sources = unimodal_dirs(tmp_path, classifier=classifier)
    model = MBT(config(classifier=classifier))  # late fusion: fusion_layer = num_layers
    report = init_streams(model, {"rgb": tmp_path / "video", "spectrogram": tmp_path / "audio"})
    model.eval()
    sd = model.state_dict()
    for m, src in sources.items():
        for k, v in src.state_dict().items():
            if k.startswith((f"tokenizers.{m}.", f"encoders.{m}.")):
                assert torch.equal(sd[k], v), k
    assert torch.equal(sd["encoder_norm.bias"], sources["spectrogram"].state_dict()["encoder_norm.bias"])
    x = inputs(model.config)
    fused = encoder_outputs(model, x)
    for m, src in sources.items():
        assert torch.equal(fused[m], encoder_outputs(src, x)[m]), m
    assert sorted(report.untouched) == ["bottleneck", "output_projection.bias", "output_projection.weight"]
    text = report.summary()
    assert "rgb stream (tokenizer, 2 blocks): " + str(tmp_path / "video") in text
    assert "encoder_norm (shared by the streams): the spectrogram source's" in text
    assert "bottleneck left as initialised" in text
    # the other stream's norm on request
    init_streams(model, {"rgb": tmp_path / "video", "spectrogram": tmp_path / "audio"}, encoder_norm_from="rgb")
    assert torch.equal(model.encoder_norm.bias, sources["rgb"].encoder_norm.bias)


def test_a_stream_of_a_fusion_model_and_a_token_source_into_a_pooled_model(tmp_path):
    """A stream can come from a multimodal model (named in the report), and a class-token source fills a pooled
    model: the grid positions carry over, the class token is not used."""
    fusion = randomised(MBT(config(fusion_layer=1)), 5)
    fusion.save_pretrained(tmp_path / "mbt")
    model = MBT(config(classifier="gap", modality_fusion=("rgb",), fusion_layer=0))
    report = init_streams(model, {"rgb": tmp_path / "mbt"})
    src = fusion.state_dict()
    assert torch.equal(model.tokenizers["rgb"].pos_embedding, src["tokenizers.rgb.pos_embedding"][:, 1:])
    assert torch.equal(model.encoders["rgb"][1].mlp.fc2.weight, src["encoders.rgb.1.mlp.fc2.weight"])
    text = report.summary()
    assert "trained on cross-modal input" in text and "class token and its position not used" in text


def test_vit_for_frames_and_ast_for_audio(tmp_path):
    p = make_vit(0)
    np.savez(tmp_path / "vit.npz", **p)
    torch.save(make_ast(0), tmp_path / "ast.pth")
    ast = read_ast_checkpoint(tmp_path / "ast.pth", freq_patches=F_PATCHES)
    model = MBT(config(fusion_layer=1))
    report = init_streams(model, {"rgb": tmp_path / "vit.npz", "spectrogram": ast})
    scenic = MBT(config(fusion_layer=1))
    init_from_vit(scenic, tmp_path / "vit.npz")  # the whole model from the ViT, Scenic's rules
    ours, want = model.state_dict(), scenic.state_dict()
    for k in want:
        if k.startswith(("tokenizers.rgb.", "encoders.rgb.")) or k == "bottleneck":
            assert torch.equal(ours[k], want[k]), k
    assert torch.equal(ours["encoders.spectrogram.0.attn.qkv.weight"], ast.blocks[0]["attn.qkv.weight"])
    assert torch.equal(ours["tokenizers.spectrogram.cls"], ast.cls)  # per-stream sources restore their class token
    assert torch.equal(ours["encoder_norm.weight"], ast.encoder_norm["weight"])  # first of modality_fusion
    assert "bottleneck" in report.parts and "vit.npz" in report.parts["bottleneck"]


def test_whole_model_vit_then_one_stream_from_a_model_directory(tmp_path):
    sources = unimodal_dirs(tmp_path)
    np.savez(tmp_path / "vit.npz", **make_vit(0))
    model = MBT(config(fusion_layer=1))
    report = init_streams(model, {"spectrogram": tmp_path / "audio"}, checkpoint=tmp_path / "vit.npz")
    scenic = MBT(config(fusion_layer=1))
    init_from_vit(scenic, tmp_path / "vit.npz")
    ours, vit, audio = model.state_dict(), scenic.state_dict(), sources["spectrogram"].state_dict()
    for k in ours:
        want = audio[k] if k.startswith(("tokenizers.spectrogram.", "encoders.spectrogram.")) else vit[k]
        assert torch.equal(ours[k], want), k
    assert set(report.parts) == {"every stream", "spectrogram stream (tokenizer, 2 blocks)"}


def test_mismatches_are_refused_by_name_and_leave_the_model_alone(tmp_path):
    unimodal_dirs(tmp_path / "deep", num_layers=3)
    unimodal_dirs(tmp_path / "long", spectrogram_shape=(2 * TIME, MEL))
    unimodal_dirs(tmp_path / "ok")
    model = MBT(config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [({"rgb": tmp_path / "deep/video"}, CheckpointError, "num_layers is 3 but the model's is 2"),
             ({"spectrogram": tmp_path / "long/audio"}, CheckpointError, r"spectrogram_shape = \(48, 8\)"),
             ({"rgb": tmp_path / "ok/audio"}, CheckpointError, "without a rgb stream"),
             ({"rgb": tmp_path / "ok/video", "spectrogram": tmp_path / "nowhere"}, CheckpointError, "no such file"),
             ({"spectrogram": tmp_path / "ok/video"}, CheckpointError, "without a spectrogram stream")]
    for sources, error, message in cases:
        with pytest.raises(error, match=message):
            init_streams(model, sources)
    shared = MBT(config(share_encoder=True, use_bottleneck=False))
    with pytest.raises(ConfigError, match="share_encoder=True"):
        init_streams(shared, {"rgb": tmp_path / "ok/video", "spectrogram": tmp_path / "ok/audio"})
    with pytest.raises(ConfigError, match=r"given for \['rgb'\]"):
        init_streams(MBT(config(modality_fusion=("spectrogram",), fusion_layer=0)), {"rgb": tmp_path / "ok/video"})
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------------------------ kernel updates
def test_one_sgd_step_on_the_spectrogram_kernel_equals_scenics_3_channel_update(tmp_path):
    """Scenic copies the log-mel channel 3 times and convolves it with the ViT's 3-channel kernel (ph, pw, 3, D). One
    SGD step on a loss of the patch embeddings, computed here in Scenic's layout, moves that kernel exactly as it
    moves mbt's 3-channel kernel fed the 1-channel spectrogram. A 1-channel (summed) kernel moves its sum a third
    as far: the 3x slower learning the default of 3 channels removes."""
    p = make_vit(0)
    np.savez(tmp_path / "vit.npz", **p)
    lr = 0.1
    spec = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (B, time, mel)
    weights = torch.randn(2, 16, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    # Scenic: x (B, time, mel, 3), kernel (ph, pw, 3, D), VALID conv with stride = kernel, tokens time-major
    kernel = torch.tensor(p["embedding/kernel"], dtype=torch.float64, requires_grad=True)
    x = spec[..., None].expand(-1, -1, -1, 3)
    b, t, f, c = x.shape
    patches = x.reshape(b, t // PATCH, PATCH, f // PATCH, PATCH, c).permute(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, -1, PATCH * PATCH * c)  # (B, N, ph * pw * 3), the kernel's (ph, pw, C) order
    tokens = patches @ kernel.reshape(-1, D) + torch.tensor(p["embedding/bias"], dtype=torch.float64)
    (tokens * weights).sum().backward()
    scenic_after = (kernel - lr * kernel.grad).detach()  # (ph, pw, 3, D)

    moved = {}
    for channels in (3, 1):
        model = MBT(config(modality_fusion=("spectrogram",), fusion_layer=0, spectrogram_shape=(16, 16),
                           spectrogram_channels=channels)).double()
        init_from_vit(model, tmp_path / "vit.npz")
        embed = model.tokenizers["spectrogram"].patch_embed
        before = embed.proj.weight.detach().clone()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        x = model.tokenizers["spectrogram"].check_input(spec[:, None])  # the 1-channel input, broadcast
        (embed(x) * weights).sum().backward()
        opt.step()
        moved[channels] = (embed.proj.weight.detach() - before).sum(1)  # the summed kernel's step (D, time, mel)
        if channels == 3:
            torch.testing.assert_close(embed.proj.weight.detach(), scenic_after.permute(3, 2, 0, 1),
                                       rtol=0, atol=1e-12)
    torch.testing.assert_close(moved[3], 3 * moved[1], rtol=1e-9, atol=1e-12)
    assert moved[1].abs().max() > 1e-3  # the step is not trivially zero

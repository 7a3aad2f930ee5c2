"""`mbt.analysis.flops` and `mbt flops`: the counts equal a hand count of the multiply-adds for every fusion type
and layer, MBT-B/16x2 lands within 1.5% of the official model's XLA count, and the command reads model
directories, run configs and presets, prints the table and writes the rows and the plot."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import pytest
import yaml

from mbt import MBT, MBTConfig
from mbt.analysis.flops import (count_flops, flop_count, load_config, parameter_count, plot_sweep, sweep,
                                write_rows)
from mbt.cli import main

# Two modalities of 8 (rgb) and 8 (spectrogram) patches, CLS tokens, 2 bottlenecks: every count is small.
TINY = MBTConfig(hidden_size=32, num_layers=3, num_heads=2, mlp_dim=48, fusion_layer=1, n_bottlenecks=2,
                 num_classes=5, num_frames=4, image_size=(16, 16), rgb_patch_size=(2, 8, 8),
                 spectrogram_shape=(32, 16), spectrogram_patch_size=(8, 8), stochastic_droplayer_rate=0.0)


def hand_macs(config: MBTConfig, present=None, scenic: bool = False) -> int:
    """Multiply-adds written out from the architecture: patch embedding; per block q, k, v and output
    projections (D x D each), QK^T and AV (N_q x N_kv x D each) and the MLP (2 x D x F per query token); head."""
    D, F = config.hidden_size, config.mlp_dim
    mods = [m for m in config.modality_fusion if present is None or m in present]
    n = {m: config.num_tokens(m) for m in mods}
    nb = config.n_bottleneck_tokens

    def block(nq, nkv):
        return 2 * nq * D * D + 2 * nkv * D * D + 2 * nq * nkv * D + 2 * nq * D * F

    macs = 0
    for m in mods:
        patch = config.rgb_patch_size if m == "rgb" else config.spectrogram_patch_size
        channels = config.rgb_channels if m == "rgb" else config.spectrogram_channels
        macs += math.prod(config.token_grid(m)) * channels * math.prod(patch) * D
    fusing = len(config.modality_fusion) > 1
    for layer in range(config.num_layers):
        if not fusing or layer < config.fusion_layer:
            macs += sum(block(n[m], n[m]) for m in mods)
        elif config.use_bottleneck:
            macs += sum(block(n[m] + nb, n[m] + nb) for m in mods)
        else:
            everything = sum(n.values())
            macs += sum(block(everything if scenic else n[m], everything) for m in mods)
    heads = len(mods) if config.classifier == "token" else 1
    return macs + heads * D * config.num_classes


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("changes", [
    {}, {"fusion_layer": 0}, {"fusion_layer": 3}, {"use_bottleneck": False}, {"classifier": "gap"},
    {"modality_fusion": ("rgb",)}, {"modality_fusion": ("spectrogram",)},
], ids=["bottleneck", "early", "late", "vanilla", "gap", "rgb_only", "spectrogram_only"])
def test_count_equals_hand_count(changes):
    config = TINY.replace(**changes)
    got = count_flops(config)
    macs = hand_macs(config)
    assert got["macs"] == macs and got["flops"] == 2 * macs
    assert got["gmacs"] == pytest.approx(macs / 1e9) and got["gflops"] == pytest.approx(2 * macs / 1e9)
    with_weights = MBT(config)
    assert got["params"] == sum(p.numel() for p in with_weights.parameters()) == parameter_count(config)


def test_scenic_vanilla_schedule_and_missing_modality_counts():
    vanilla = TINY.replace(use_bottleneck=False, fusion_layer=0)
    assert count_flops(vanilla, scenic_vanilla_schedule=True)["macs"] == hand_macs(vanilla, scenic=True)
    assert count_flops(vanilla)["macs"] < count_flops(vanilla, scenic_vanilla_schedule=True)["macs"]
    # A bottleneck model given one modality still runs its stream over [tokens ; bottleneck].
    got = count_flops(TINY, modalities=["rgb"])
    assert got["macs"] == hand_macs(TINY, present=["rgb"]) and got["modalities"] == ["rgb"]
    with pytest.raises(ValueError, match="give one or more"):
        count_flops(TINY, modalities=["depth"])


def test_sweep_rows_and_plot(tmp_path):
    rows = sweep(TINY)
    L = TINY.num_layers
    assert [(r["fusion"], r["fusion_layer"]) for r in rows] == [
        (kind, layer) for layer in range(L + 1) for kind in ("bottleneck", "vanilla", "vanilla-scenic")]
    for r in rows:
        c = TINY.replace(fusion_layer=r["fusion_layer"], use_bottleneck=r["fusion"] == "bottleneck")
        assert r["macs"] == hand_macs(c, scenic=r["fusion"] == "vanilla-scenic"), r
    late = {r["fusion"]: r["macs"] for r in rows if r["fusion_layer"] == L}
    assert len(set(late.values())) == 1  # late fusion: no exchange, the same cost for every type
    png = plot_sweep(rows, tmp_path / "sweep.png")
    width, height = png_size(png)
    assert width > 300 and height > 200
    with pytest.raises(ValueError, match="two modalities"):
        sweep(TINY.replace(modality_fusion=("rgb",)))


def test_write_rows_json_and_csv(tmp_path):
    rows = sweep(TINY, scenic_schedule=False)
    back = json.loads(write_rows(rows, tmp_path / "rows.json").read_text())
    assert [(r["fusion"], r["macs"]) for r in back] == [(r["fusion"], r["macs"]) for r in rows]
    with write_rows(rows, tmp_path / "rows.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [int(r["macs"]) for r in table] == [r["macs"] for r in rows]
    assert table[0]["tokens_rgb"] == str(TINY.num_tokens("rgb"))
    with pytest.raises(ValueError, match=".json or .csv"):
        write_rows(rows, tmp_path / "rows.txt")


def test_mbt_b16x2_within_1_5_percent_of_the_official_count():
    """The official MBT-B/16x2 (AudioSet inputs: rgb 32x224x224 in 2x16x16 tubelets, spectrogram 800x128 in 16x16
    patches, gap head, 4 bottlenecks, 527 classes, ViT-Base) gives 985.1 GFLOPs with bottleneck fusion at layer 8
    and 984.3 with late fusion (XLA cost analysis, 2 per multiply-add, element-wise ops included). We count the
    matmuls only, so we are a little below: 977.45 and 976.65 GFLOPs (-0.78%)."""
    b16 = MBTConfig.from_preset("mbt-b16x2", classifier="gap", n_bottlenecks=4, num_classes=527)
    assert (b16.num_tokens("rgb"), b16.num_tokens("spectrogram")) == (3136, 400)
    for config, official in ((b16, 985.1), (b16.replace(fusion_layer=12), 984.3)):
        got = count_flops(config)
        assert got["macs"] == hand_macs(config)
        print(f"fusion layer {config.fusion_layer}: {got['gflops']:.2f} GFLOPs ({got['gmacs']:.2f} GMACs) vs "
              f"official {official} GFLOPs: {100 * (got['gflops'] / official - 1):+.2f}%")
        assert got["gflops"] == pytest.approx(official, rel=0.015)
        assert got["gflops"] < official  # XLA also counts the element-wise ops


def test_demo_keeps_its_imports():
    from mbt.avdigits import demo

    assert demo.flop_count is flop_count and demo.parameter_count is parameter_count
    assert flop_count(TINY) == {"gmacs": hand_macs(TINY) / 1e9, "gflops": 2 * hand_macs(TINY) / 1e9}


def test_load_config_sources(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    TINY.to_json_file(model_dir / "config.json")  # a config alone: the weights are not needed
    assert load_config(model_dir)[0] == TINY
    assert load_config(model_dir / "config.json")[0] == TINY
    assert load_config("mbt-b16x2")[0] == MBTConfig.from_preset("mbt-b16x2")
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": {"preset": "mbt-b16x2", "fusion_layer": 4}}))
    config, notes = load_config(run)
    assert config.fusion_layer == 4 and config.num_classes == 527
    assert any("num_classes is not in" in n for n in notes)
    assert load_config(run, num_classes=10)[0].num_classes == 10
    with pytest.raises(ValueError, match="preset name"):
        load_config(tmp_path / "missing")


def test_flops_command(tmp_path, capsys):
    """`mbt flops` on a model directory written by save_pretrained: the table, the JSON rows, the plot."""
    model_dir = tmp_path / "tiny"
    MBT(TINY).save_pretrained(model_dir)
    assert main(["flops", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "GMACs (multiply-adds)" in out and "GFLOPs (2/MAC)" in out and "params (M)" in out
    assert f"{2 * hand_macs(TINY) / 1e9:.4f}" in out
    assert main(["flops", str(model_dir), "--sweep", "--plot", str(tmp_path / "s.png"),
                 "--output", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "s.json").read_text())
    assert len(rows) == 3 * (TINY.num_layers + 1) and out.count("vanilla-scenic") == TINY.num_layers + 1
    assert rows[0] == {**rows[0], "fusion": "bottleneck", "fusion_layer": 0,
                       "macs": hand_macs(TINY.replace(fusion_layer=0))}
    assert png_size(tmp_path / "s.png")[0] > 300
    # A vanilla model shows both schedules; a bad source is one line, not a traceback.
    vanilla_dir = tmp_path / "vanilla"
    MBT(TINY.replace(use_bottleneck=False)).save_pretrained(vanilla_dir)
    assert main(["flops", str(vanilla_dir), "--modalities", "rgb,spectrogram"]) == 0
    out = capsys.readouterr().out
    assert "vanilla " in out and "vanilla-scenic" in out
    assert main(["flops", str(tmp_path / "nothing")]) == 1
    assert "not a model directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["flops", "--help"])
    assert "examples:\n  mbt flops" in capsys.readouterr().out

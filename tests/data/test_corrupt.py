"""Test-time corruptions (`mbt.data.corrupt`) do what their strengths say, measured on the output."""

from __future__ import annotations

import math

import pytest
import torch

from mbt.data.corrupt import Corruption, gaussian_blur
from mbt.errors import ConfigError


@pytest.mark.parametrize("snr", [20.0, 10.0, 0.0, -5.0])
def test_audio_noise_has_the_snr_it_says(snr):
    t = torch.arange(32000) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.sin(2 * math.pi * 1250 * t)
    noisy = Corruption("audio", "noise", snr).waveform(wave, index=3, clip=1)
    noise = (noisy - wave).double()
    measured = 10 * math.log10(float(wave.double().pow(2).mean()) / float(noise.pow(2).mean()))
    assert measured == pytest.approx(snr, abs=1e-3)
    assert abs(float(noise.mean())) < 0.05 * float(noise.std())  # zero-mean white noise
    again = Corruption("audio", "noise", snr).waveform(wave, index=3, clip=1)
    assert torch.equal(noisy, again)  # seeded by the clip
    assert not torch.equal(noisy, Corruption("audio", "noise", snr).waveform(wave, index=4, clip=1))
    silent = torch.zeros(1000)
    assert torch.equal(Corruption("audio", "noise", snr).waveform(silent, 0, 0), silent)


def test_video_noise_blur_and_occlusion_strengths():
    grey = torch.zeros(3, 4, 32, 48)
    noisy = Corruption("video", "noise", 0.1).frames(grey, 0, 0)
    assert float(noisy.std()) == pytest.approx(0.1, rel=0.02)
    # blur: an impulse spreads into a Gaussian whose standard deviation (per axis) is the strength
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[..., 20, 20] = 1.0
    for sigma in (1.0, 2.0, 3.0):
        out = Corruption("video", "blur", sigma).frames(impulse, 0, 0)[0, 0]
        assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
        x = torch.arange(41.0) - 20
        var = float((out.sum(0) * x ** 2).sum())
        assert math.sqrt(var) == pytest.approx(sigma, rel=0.02)
    # occlusion: the share of the frame set to grey, the same square in every frame and channel
    frames = torch.ones(3, 4, 32, 48)
    for share in (0.25, 0.5, 0.75):
        out = Corruption("video", "occlusion", share).frames(frames, 2, 0)
        covered = (out == 0).float().mean(dim=(0, 1))
        assert float(covered.mean()) == pytest.approx(share, abs=0.02)
        assert bool(((out == 0).all(dim=0).all(dim=0) == (out == 0)[0, 0]).all())


def test_blur_on_images_smaller_than_the_kernel():
    img = torch.rand(1, 2, 3, 3)
    out = gaussian_blur(img, 4.0)
    assert out.shape == img.shape and torch.isfinite(out).all()
    assert float(out.mean()) == pytest.approx(float(img.mean()), abs=0.1)


def test_parse_and_errors():
    assert Corruption.parse("audio:noise:-5") == Corruption("audio", "noise", -5.0)
    assert Corruption.parse("video:blur:2").describe() == "video blur 2 px"
    for text, message in (("audio:blur:2", "allowed: audio:noise"), ("video:noise", "STREAM:KIND:STRENGTH"),
                          ("video:noise:x", "not a number"), ("video:occlusion:1.5", "at most 1"),
                          ("video:blur:-1", ">= 0"), ("speech:noise:3", "corruption stream")):
        with pytest.raises(ConfigError, match=message):
            Corruption.parse(text)


def test_the_dataset_corrupts_each_test_clip(tmp_path):
    """Through VideoDataset: the corrupted spectrogram differs from the clean one and is the same on a second
    read; frames are occluded."""
    from mbt.data import DataConfig, VideoDataset, read_annotations
    from mbt.data.audio import FrontEndConfig
    from mbt.data.synthetic import tone_schedule, write_media

    write_media(tmp_path / "a.mp4", duration=1.5, size=(24, 32), audio_fn=tone_schedule([440.0], amplitude=0.3))
    (tmp_path / "a.csv").write_text("path,label\na.mp4,x\n")
    ann = read_annotations(tmp_path / "a.csv")
    dc = DataConfig(num_frames=4, stride=2, min_resize=20, crop_size=(16, 16), spec_frames=96, num_test_clips=2,
                    front_end=FrontEndConfig.preset("logmel", num_mel_bins=32, mean=-6.0, std=3.0))
    clean = VideoDataset(ann, dc, split="test")[0]
    noisy = VideoDataset(ann, dc, split="test", corruption=Corruption("audio", "noise", 0.0))[0]
    again = VideoDataset(ann, dc, split="test", corruption=Corruption("audio", "noise", 0.0))[0]
    assert torch.equal(noisy["spectrogram"], again["spectrogram"]) and torch.equal(noisy["rgb"], clean["rgb"])
    assert (noisy["spectrogram"] - clean["spectrogram"]).abs().mean() > 0.1
    hidden = VideoDataset(ann, dc, split="test", corruption=Corruption("video", "occlusion", 0.5))[0]
    assert torch.equal(hidden["spectrogram"], clean["spectrogram"])
    assert float((hidden["rgb"] == 0).float().mean()) == pytest.approx(0.5, abs=0.05)

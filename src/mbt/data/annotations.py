"""Annotation tables: which file, which part of it, which labels. One reader per dataset format.

Every reader returns `Annotations`: records (file path, clip bounds, label indices), the label names, whether the
task is multi-label, and for multi-head tasks (EPIC-KITCHENS verb + noun) the heads. Ids are mapped to files in a
video folder by the usual naming of each dataset (`VideoIndex`); annotated clips whose file is not there are listed
in `Annotations.missing_files` and left out, never silently.

Clip bounds: a record's [start, end] are seconds in the annotated video. Many datasets are distributed as files
already cut to the clip (VGGSound, Kinetics, most AudioSet copies); the dataset then sees a file shorter than `end`
and uses the whole file (see `clip_bounds`).

Formats (`read_annotations(format=...)`, or 'auto' to detect from the file):
  audioset  *_segments.csv (3 '#' header lines; YTID, start_seconds, end_seconds, "label MIDs") with
            class_labels_indices.csv (index,mid,display_name) as `labels`. Multi-label.
  vggsound  vggsound.csv, no header: youtube_id,start_seconds,label,split. Single-label; 10 s clips.
  epic      EPIC_100_train.csv / EPIC_100_validation.csv (verb_class, noun_class, start/stop timestamps); class
            names from EPIC_100_verb_classes.csv and EPIC_100_noun_classes.csv if given (`labels` = the folder
            holding them). Two heads: verb (97) then noun (300).
  kinetics  label,youtube_id,time_start,time_end,split[,is_cc]. Single-label.
  csv       path,label[,start,end]; several labels in one field separated by ';'; a header row is optional.
            Paths are relative to `video_dir` (or to the CSV's folder). Multi-label if any row has several labels.
            A header with several label columns (path,shown,spoken,match) makes a multi-head task, one head per
            column.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import AnnotationError

MEDIA_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".3gp",
                    ".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus", ".aac")
FORMATS = ("audioset", "vggsound", "epic", "kinetics", "csv")
HEADER_PATH_NAMES = ("path", "file", "filename", "filepath", "video", "video_path", "clip")


@dataclass(frozen=True)
class Record:
    path: str
    labels: tuple[int, ...]
    """Class indices; for multi-head tasks, indices into the concatenated heads (e.g. noun k is 97 + k)."""
    start: float | None = None
    end: float | None = None
    id: str = ""


@dataclass
class Annotations:
    records: list[Record]
    label_names: list[str]
    multi_label: bool
    heads: dict[str, int] | None = None
    """Multi-head tasks: {head name: classes}, in the order the label vector concatenates them."""
    source: str = ""
    missing_files: list[str] = field(default_factory=list)
    """Ids of annotated clips with no file in the video folder (left out of `records`)."""
    notes: list[str] = field(default_factory=list)
    """What a reader noticed and kept (duplicate rows, conflicting labels), shown by `summary()`."""

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def problem_type(self) -> str:
        """'multi_head' (EPIC verb + noun), 'multi_label' or 'single_label' (MBTConfig.problem_type)."""
        return "multi_head" if self.heads else ("multi_label" if self.multi_label else "single_label")

    def label_vector(self, record: Record) -> np.ndarray:
        """float32 (num_classes,): multi-hot (multi-label), one-hot (single-label) or one-hot per head."""
        v = np.zeros(self.num_classes, np.float32)
        v[list(record.labels)] = 1.0
        return v

    def summary(self) -> str:
        if self.heads:
            heads = ", ".join(f"{h} {n}" for h, n in self.heads.items())
            text = f"{self.source}: {len(self.records)} clips, {len(self.heads)} heads ({heads} classes)"
        else:
            text = f"{self.source}: {len(self.records)} clips, {self.num_classes} classes"
        if self.missing_files:
            text += (f"; {len(self.missing_files)} annotated clips have no file and are left out "
                     f"(e.g. {', '.join(self.missing_files[:3])})")
        for note in self.notes:
            text += f"; {note}"
        return text


# ---------------------------------------------------------------------------------------------------- files
class VideoIndex:
    """The media files under a folder, found by name without extension (searched recursively, once)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise AnnotationError(f"{self.root}: the video folder does not exist")
        self.by_stem: dict[str, str] = {}
        for dirpath, _, files in os.walk(self.root):
            for name in sorted(files):
                stem, ext = os.path.splitext(name)
                if ext.lower() in MEDIA_EXTENSIONS:
                    self.by_stem.setdefault(stem, os.path.join(dirpath, name))

    def find(self, stems: Iterable[str]) -> str | None:
        for stem in stems:
            if stem in self.by_stem:
                return self.by_stem[stem]
        return None


def _resolve(records: list[tuple[Record, list[str]]], video_dir: str | Path | None) -> tuple[list[Record], list[str]]:
    """Replace candidate stems by the file found in `video_dir`."""
    if video_dir is None:
        raise AnnotationError("this format names clips by id: give the folder that holds the videos (video_dir)")
    index = VideoIndex(video_dir)
    found, missing = [], []
    for record, stems in records:
        path = index.find(stems)
        if path is None:
            missing.append(record.id)
        else:
            found.append(Record(path, record.labels, record.start, record.end, record.id))
    return found, missing


def _seconds_stems(ytid: str, start: float, end: float | None) -> list[str]:
    """File names used by common downloaders for a YouTube clip."""
    s, ms = int(round(start)), int(round(start * 1000))
    stems = [f"{ytid}_{s:06d}", f"{ytid}_{s}", f"{ytid}_{ms}", f"{ytid}_{start:.1f}", f"{ytid}_{start:.3f}"]
    if end is not None:
        e = int(round(end))
        stems += [f"{ytid}_{s:06d}_{e:06d}", f"{ytid}_{s}_{e}", f"{ytid}_{ms}_{int(round(end * 1000))}",
                  f"{ytid}_{start:.1f}_{end:.1f}", f"{ytid}_{start:.3f}_{end:.3f}"]
    return stems + [ytid, f"Y{ytid}"]


# ---------------------------------------------------------------------------------------------------- readers
def read_text(path: str | Path, what: str = "annotation file") -> str:
    """A text file as UTF-8 (a byte-order mark is dropped); an error names the file, the line and the byte that is
    not UTF-8, and the fix."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such {what}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise AnnotationError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the {what} as "
                              "UTF-8") from None


def _rows(path: Path, skip_comments: bool = False) -> list[tuple[int, list[str]]]:
    rows = []
    for n, row in enumerate(csv.reader(io.StringIO(read_text(path), newline=""), skipinitialspace=True), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if skip_comments and row[0].lstrip().startswith("#"):
            continue
        rows.append((n, [c.strip() for c in row]))
    return rows


def _float(value: str, path: Path, line: int, name: str) -> float:
    """A time in seconds from the start of the file: a finite number >= 0, else an error naming the row."""
    try:
        t = float(value)
    except ValueError:
        raise AnnotationError(f"{path}:{line}: {name} {value!r} is not a number") from None
    if not math.isfinite(t):
        raise AnnotationError(f"{path}:{line}: {name} {value!r} is not a finite number of seconds")
    if t < 0:
        raise AnnotationError(f"{path}:{line}: {name} {value} is negative; times are seconds from the start of "
                              "the file")
    return t


def _repeats(parsed: Sequence[tuple[int, str, Sequence[str], float | None, float | None]]) -> list[str]:
    """Notes on rows that repeat: the same clip (file, start, end) with the same labels (duplicates), and the
    same clip with different labels (conflicts), with counts and the lines of the first example."""
    seen: dict[tuple, tuple[int, tuple]] = {}
    duplicates, conflicts, example_dup, example_conflict = 0, 0, "", ""
    for n, file, labels, start, end in parsed:
        key, value = (file, start, end), tuple(sorted(labels))
        if key not in seen:
            seen[key] = (n, value)
        elif seen[key][1] == value:
            duplicates += 1
            example_dup = example_dup or f"{file} at lines {seen[key][0]} and {n}"
        else:
            conflicts += 1
            example_conflict = example_conflict or f"{file} at lines {seen[key][0]} and {n}"
    notes = []
    if duplicates:
        notes.append(f"{duplicates} duplicate row(s), each read again as its own clip (e.g. {example_dup})")
    if conflicts:
        notes.append(f"{conflicts} row(s) give a clip already listed other labels (e.g. {example_conflict}); each "
                     "row is read as its own clip")
    return notes


def read_audioset(segments_csv: str | Path, labels: str | Path, video_dir: str | Path) -> Annotations:
    """AudioSet segments (balanced/unbalanced/eval_segments.csv) with class_labels_indices.csv."""
    path, labels_path = Path(segments_csv), Path(labels) if labels else None
    if labels_path is None or labels_path.is_dir():
        candidate = (labels_path or path.parent) / "class_labels_indices.csv"
        labels_path = candidate
    mids, names = [], []
    for n, row in _rows(labels_path):
        if row[0] == "index":
            continue
        if len(row) < 3:
            raise AnnotationError(f"{labels_path}:{n}: expected index,mid,display_name")
        mids.append(row[1])
        names.append(row[2])
    mid_index = {m: i for i, m in enumerate(mids)}
    items = []
    for n, row in _rows(path, skip_comments=True):
        if len(row) < 4:
            raise AnnotationError(f"{path}:{n}: expected YTID, start_seconds, end_seconds, \"labels\"")
        ytid, start, end = row[0], _float(row[1], path, n, "start_seconds"), _float(row[2], path, n, "end_seconds")
        mids_here = [m.strip() for m in ",".join(row[3:]).strip('"').split(",") if m.strip()]
        unknown = [m for m in mids_here if m not in mid_index]
        if unknown:
            raise AnnotationError(f"{path}:{n}: label {unknown[0]!r} is not in {labels_path}")
        labels_here = tuple(sorted(mid_index[m] for m in mids_here))
        items.append((Record("", labels_here, start, end, ytid), _seconds_stems(ytid, start, end)))
    records, missing = _resolve(items, video_dir)
    return Annotations(records, names, True, None, str(path), missing)


def read_vggsound(csv_path: str | Path, video_dir: str | Path, split: str | None = None,
                  label_names: Sequence[str] | None = None) -> Annotations:
    """vggsound.csv (youtube_id,start_seconds,label,split; no header). Label names: all labels in the file,
    sorted (309 in the full file), unless given."""
    path = Path(csv_path)
    rows = _rows(path)
    if rows and rows[0][1][0] in ("youtube_id", "# YouTube ID"):
        rows = rows[1:]
    parsed = []
    for n, row in rows:
        if len(row) < 4:
            raise AnnotationError(f"{path}:{n}: expected youtube_id,start_seconds,label,split")
        parsed.append((n, row[0], _float(row[1], path, n, "start_seconds"), ",".join(row[2:-1]), row[-1]))
    names = list(label_names) if label_names is not None else sorted({p[3] for p in parsed})
    index = {name: i for i, name in enumerate(names)}
    items = []
    for n, ytid, start, label, row_split in parsed:
        if split is not None and row_split != split:
            continue
        if label not in index:
            raise AnnotationError(f"{path}:{n}: label {label!r} is not among the {len(names)} label names")
        items.append((Record("", (index[label],), start, start + 10.0, f"{ytid}_{int(start):06d}"),
                      _seconds_stems(ytid, start, start + 10.0)))
    records, missing = _resolve(items, video_dir)
    return Annotations(records, names, False, None, str(path), missing)


def _timestamp(value: str, path: Path, line: int) -> float:
    m = re.fullmatch(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)", value)
    if not m:
        raise AnnotationError(f"{path}:{line}: timestamp {value!r} is not HH:MM:SS.ff")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _epic_class_names(folder: Path | None, head: str, count: int) -> list[str]:
    f = folder / f"EPIC_100_{head}_classes.csv" if folder is not None else None
    if f is None or not f.is_file():
        return [f"{head}:{i}" for i in range(count)]
    names = {}
    for n, row in _rows(f):
        if row[0] == "id":
            continue
        names[int(row[0])] = f"{head}:{row[1]}"
    return [names.get(i, f"{head}:{i}") for i in range(count)]


def read_epic_kitchens(csv_path: str | Path, video_dir: str | Path, labels: str | Path | None = None,
                       num_verbs: int = 97, num_nouns: int = 300) -> Annotations:
    """EPIC_100_{train,validation}.csv. The label vector is [verb one-hot (97) | noun one-hot (300)]; the action
    is the (verb, noun) pair. A file without verb_class/noun_class (the test timestamps) gives unlabelled records.
    `labels`: the folder with EPIC_100_verb_classes.csv and EPIC_100_noun_classes.csv (names only)."""
    path = Path(csv_path)
    rows = _rows(path)
    if not rows or "narration_id" not in rows[0][1]:
        raise AnnotationError(f"{path}: expected an EPIC-KITCHENS-100 CSV whose header starts with narration_id")
    header = rows[0][1]
    col = {name: i for i, name in enumerate(header)}
    for needed in ("video_id", "start_timestamp", "stop_timestamp"):
        if needed not in col:
            raise AnnotationError(f"{path}: column {needed!r} is missing from the header")
    labelled = "verb_class" in col and "noun_class" in col
    items = []
    for n, row in rows[1:]:
        if len(row) < len(header):
            raise AnnotationError(f"{path}:{n}: {len(row)} fields, the header has {len(header)}")
        start = _timestamp(row[col["start_timestamp"]], path, n)
        end = _timestamp(row[col["stop_timestamp"]], path, n)
        lab: tuple[int, ...] = ()
        if labelled:
            try:
                verb, noun = int(row[col["verb_class"]]), int(row[col["noun_class"]])
            except ValueError:
                raise AnnotationError(f"{path}:{n}: verb_class {row[col['verb_class']]!r} and noun_class "
                                      f"{row[col['noun_class']]!r} must be integers") from None
            if not (0 <= verb < num_verbs and 0 <= noun < num_nouns):
                raise AnnotationError(f"{path}:{n}: verb_class {verb} or noun_class {noun} out of range")
            lab = (verb, num_verbs + noun)
        vid = row[col["video_id"]]
        rid = row[col["narration_id"]] if "narration_id" in col else f"{vid}@{start}"
        items.append((Record("", lab, start, end, rid), [vid]))
    records, missing = _resolve(items, video_dir)
    folder = Path(labels) if labels is not None else path.parent
    names = _epic_class_names(folder, "verb", num_verbs) + _epic_class_names(folder, "noun", num_nouns)
    return Annotations(records, names, False, {"verb": num_verbs, "noun": num_nouns}, str(path), missing)


def read_kinetics(csv_path: str | Path, video_dir: str | Path, label_names: Sequence[str] | None = None
                  ) -> Annotations:
    """Kinetics CSV (label,youtube_id,time_start,time_end,split[,is_cc]). Label names: the labels in the file,
    sorted, unless given (pass the training file's names when reading validation)."""
    path = Path(csv_path)
    rows = _rows(path)
    if not rows or rows[0][1][:2] != ["label", "youtube_id"]:
        raise AnnotationError(f"{path}: expected a Kinetics CSV with header label,youtube_id,time_start,time_end,...")
    parsed = []
    for n, row in rows[1:]:
        if len(row) < 4:
            raise AnnotationError(f"{path}:{n}: expected label,youtube_id,time_start,time_end")
        parsed.append((n, row[0], row[1], _float(row[2], path, n, "time_start"), _float(row[3], path, n, "time_end")))
    names = list(label_names) if label_names is not None else sorted({p[1] for p in parsed})
    index = {name: i for i, name in enumerate(names)}
    items = []
    for n, label, ytid, start, end in parsed:
        if label not in index:
            raise AnnotationError(f"{path}:{n}: label {label!r} is not among the {len(names)} label names")
        items.append((Record("", (index[label],), start, end, f"{ytid}_{int(start):06d}_{int(end):06d}"),
                      _seconds_stems(ytid, start, end)))
    records, missing = _resolve(items, video_dir)
    return Annotations(records, names, False, None, str(path), missing)


def read_csv(csv_path: str | Path, video_dir: str | Path | None = None, label_names: Sequence[str] | None = None,
             multi_label: bool | None = None) -> Annotations:
    """A plain CSV: path,label[,start,end] (header optional; several labels joined by ';').

    Multi-head: a header naming several label columns, e.g. `path,shown,spoken,match[,start,end]`, makes one
    single-label head per column (in column order). Class names are 'head:value', values sorted within a head
    (or `label_names` in that form, to share the training file's label space)."""
    path = Path(csv_path)
    rows = _rows(path)
    header: list[str] | None = None
    if rows and (rows[0][1][0].lower() in HEADER_PATH_NAMES
                 or (len(rows[0][1]) > 1 and rows[0][1][1].lower() in ("label", "labels"))):
        header = [c.lower() for c in rows[0][1]]
        rows = rows[1:]
    label_cols = [i for i, c in enumerate(header or []) if i > 0 and c not in ("start", "end")]
    if header and len(label_cols) > 1:
        return _read_multihead_csv(path, header, label_cols, rows, video_dir, label_names)
    base = Path(video_dir) if video_dir is not None else path.parent
    parsed = []
    for n, row in rows:
        if len(row) not in (2, 4):
            raise AnnotationError(f"{path}:{n}: expected path,label or path,label,start,end, got {len(row)} fields")
        labels_here = [x.strip() for x in row[1].split(";") if x.strip()]
        start = _float(row[2], path, n, "start") if len(row) == 4 and row[2] else None
        end = _float(row[3], path, n, "end") if len(row) == 4 and row[3] else None
        if start is not None and end is not None and end <= start:
            raise AnnotationError(f"{path}:{n}: end {end} is not after start {start}")
        parsed.append((n, row[0], labels_here, start, end))
    if parsed and not any(p[2] for p in parsed):
        raise AnnotationError(f"{path}:{parsed[0][0]}: no row has a label (the label column is empty in all "
                              f"{len(parsed)} rows); give each clip its label (several joined by ';')")
    names = list(label_names) if label_names is not None else sorted({l for p in parsed for l in p[2]})
    index = {name: i for i, name in enumerate(names)}
    records, missing = [], []
    for n, file, labels_here, start, end in parsed:
        unknown = [l for l in labels_here if l not in index]
        if unknown:
            raise AnnotationError(f"{path}:{n}: label {unknown[0]!r} is not among the {len(names)} label names")
        full = file if os.path.isabs(file) else str(base / file)
        if os.path.exists(full):
            records.append(Record(full, tuple(sorted(index[l] for l in labels_here)), start, end, file))
        else:
            missing.append(file)
    if multi_label is None:
        multi_label = any(len(p[2]) != 1 for p in parsed)
    return Annotations(records, names, multi_label, None, str(path), missing, _repeats(parsed))


def _read_multihead_csv(path: Path, header: list[str], label_cols: list[int], rows: list[tuple[int, list[str]]],
                        video_dir: str | Path | None, label_names: Sequence[str] | None) -> Annotations:
    heads = [header[i] for i in label_cols]
    if len(set(heads)) != len(heads):
        raise AnnotationError(f"{path}: the header names a label column twice ({', '.join(heads)})")
    col = {c: i for i, c in enumerate(header)}
    values: dict[str, list[str]]
    if label_names is not None:
        values = {h: [] for h in heads}
        for name in label_names:
            h, sep, v = name.partition(":")
            if not sep or h not in values:
                raise AnnotationError(f"{path}: label name {name!r} is not 'head:value' with a head among the "
                                      f"file's label columns ({', '.join(heads)})")
            values[h].append(v)
        empty = [h for h in heads if not values[h]]
        if empty:
            raise AnnotationError(f"{path}: the label names give no class for column {empty[0]!r}")
    else:
        values = {h: sorted({row[i] for _, row in rows if i < len(row) and row[i]}) for h, i in zip(heads, label_cols)}
    offsets, total = {}, 0
    for h in heads:
        offsets[h] = total
        total += len(values[h])
    index = {h: {v: offsets[h] + k for k, v in enumerate(values[h])} for h in heads}
    base = Path(video_dir) if video_dir is not None else path.parent
    records, missing, parsed = [], [], []
    for n, row in rows:
        if len(row) != len(header):
            raise AnnotationError(f"{path}:{n}: {len(row)} fields, the header has {len(header)}")
        lab = []
        for h, i in zip(heads, label_cols):
            if row[i] not in index[h]:
                raise AnnotationError(f"{path}:{n}: {h} {row[i]!r} is not among the {len(values[h])} {h} classes "
                                      f"({', '.join(values[h][:10])}{', ...' if len(values[h]) > 10 else ''})")
            lab.append(index[h][row[i]])
        start = _float(row[col["start"]], path, n, "start") if "start" in col and row[col["start"]] else None
        end = _float(row[col["end"]], path, n, "end") if "end" in col and row[col["end"]] else None
        if start is not None and end is not None and end <= start:
            raise AnnotationError(f"{path}:{n}: end {end} is not after start {start}")
        file = row[0]
        parsed.append((n, file, [str(x) for x in lab], start, end))
        full = file if os.path.isabs(file) else str(base / file)
        if os.path.exists(full):
            records.append(Record(full, tuple(lab), start, end, file))
        else:
            missing.append(file)
    names = [f"{h}:{v}" for h in heads for v in values[h]]
    return Annotations(records, names, False, {h: len(values[h]) for h in heads}, str(path), missing,
                       _repeats(parsed))


# ---------------------------------------------------------------------------------------------------- dispatch
def detect_format(path: str | Path) -> str:
    """Guess the format of an annotation file from its first lines."""
    head = [line.strip() for line in read_text(path).splitlines()[:5]]
    first = head[0] if head else ""
    if first.startswith("#") and any("YTID" in line for line in head):
        return "audioset"
    if first.startswith("narration_id"):
        return "epic"
    if first.startswith("label,youtube_id"):
        return "kinetics"
    row = next(csv.reader([first])) if first else []
    if len(row) == 4 and row[-1].strip() in ("train", "test") and re.fullmatch(r"\d+(\.\d+)?", row[1].strip()):
        return "vggsound"
    return "csv"


def read_annotations(path: str | Path, format: str = "auto", video_dir: str | Path | None = None,
                     labels: str | Path | Sequence[str] | None = None, split: str | None = None) -> Annotations:
    """Read an annotation file of any supported format.

    Args:
      format: one of FORMATS or 'auto'.
      video_dir: the folder with the media files (for csv: the base of relative paths).
      labels: audioset: class_labels_indices.csv (default: beside the CSV); epic: the folder with the class CSVs;
        others: the label names in order, or a text file with one name per line (to share one label space between
        the train and validation files).
      split: vggsound only: 'train' or 'test'.
    """
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown annotation format {format!r}; allowed: {FORMATS} or 'auto'")
    names = None
    if fmt in ("vggsound", "kinetics", "csv") and labels is not None:
        if isinstance(labels, (str, Path)):
            names = [l.strip() for l in read_text(labels, "label list").splitlines() if l.strip()]
        else:
            names = list(labels)
    if fmt == "audioset":
        return read_audioset(path, labels, video_dir)  # type: ignore[arg-type]
    if fmt == "vggsound":
        return read_vggsound(path, video_dir, split=split, label_names=names)  # type: ignore[arg-type]
    if fmt == "epic":
        return read_epic_kitchens(path, video_dir, labels=labels)  # type: ignore[arg-type]
    if fmt == "kinetics":
        return read_kinetics(path, video_dir, label_names=names)  # type: ignore[arg-type]
    return read_csv(path, video_dir, label_names=names)

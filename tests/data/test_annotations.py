"""Annotation readers on small files written as each dataset distributes them."""

from __future__ import annotations

import numpy as np
import pytest

from mbt.data.annotations import (AnnotationError, Record, detect_format, read_annotations, read_audioset,
                                  read_csv, read_epic_kitchens, read_kinetics, read_vggsound)
from mbt.data.datasets import clip_bounds


def touch(folder, *names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0")  # the readers only look for files; decoding is tested elsewhere


def test_audioset(tmp_path):
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/0ytgt,"Child"\n')
    (tmp_path / "balanced_train_segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/0ytgt"\n'
        '--ZhevVpy1s, 50.000, 60.000, "/m/05zppz"\n'
        '--aE2O5G5WE, 0.000, 10.000, "/m/09x0r"\n')
    videos = tmp_path / "videos"
    touch(videos, "--PJHxphWEs_000030.mp4", "sub/Y--ZhevVpy1s.mkv")
    ann = read_annotations(tmp_path / "balanced_train_segments.csv", video_dir=videos)
    assert detect_format(tmp_path / "balanced_train_segments.csv") == "audioset"
    assert ann.multi_label and ann.label_names == ["Speech", "Male speech, man speaking", "Child"]
    assert [r.id for r in ann.records] == ["--PJHxphWEs", "--ZhevVpy1s"]
    assert ann.records[0].labels == (0, 2) and (ann.records[0].start, ann.records[0].end) == (30.0, 40.0)
    assert ann.records[1].path.endswith("sub/Y--ZhevVpy1s.mkv")
    np.testing.assert_array_equal(ann.label_vector(ann.records[0]), [1, 0, 1])
    assert ann.missing_files == ["--aE2O5G5WE"] and "1 annotated clips have no file" in ann.summary()


def test_audioset_unknown_label_names_the_line(tmp_path):
    (tmp_path / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,A\n")
    (tmp_path / "s.csv").write_text('# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\nx, 0, 10, "/m/b"\n')
    with pytest.raises(AnnotationError, match=r"s.csv:4: label '/m/b' is not in .*class_labels_indices.csv"):
        read_audioset(tmp_path / "s.csv", None, tmp_path)


def test_vggsound(tmp_path):
    (tmp_path / "vggsound.csv").write_text(
        "---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,train\n"
        '--56QUhyDQM,185,"playing tennis, doubles",train\n--5OkAjCI7g,40,people marching,train\n')
    touch(tmp_path / "v", "---g-f_I2yQ_000001.mp4", "--0PQM4-hqg_000030.mp4", "--56QUhyDQM_000185.mp4")
    assert detect_format(tmp_path / "vggsound.csv") == "vggsound"
    train = read_annotations(tmp_path / "vggsound.csv", video_dir=tmp_path / "v", split="train")
    assert train.label_names == ["people marching", "playing tennis, doubles", "waterfall burbling"]
    assert not train.multi_label
    assert [(r.id, r.labels, r.start, r.end) for r in train.records] == [
        ("--0PQM4-hqg_000030", (2,), 30.0, 40.0), ("--56QUhyDQM_000185", (1,), 185.0, 195.0)]
    assert train.missing_files == ["--5OkAjCI7g_000040"]
    test = read_annotations(tmp_path / "vggsound.csv", video_dir=tmp_path / "v", split="test")
    assert test.label_names == train.label_names and [r.labels for r in test.records] == [(0,)]


def test_epic_kitchens(tmp_path):
    header = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
              "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    (tmp_path / "EPIC_100_train.csv").write_text(
        header + 'P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,3,'
                 '[\'door\'],[3]\nP01_01_1,P01,P01_01,00:00:02.629,00:01:04.02,00:01:05.5,153,177,turn on light,'
                 'turn-on,6,light,114,[\'light\'],[114]\nP02_03_0,P02,P02_03,00:00:01.0,00:00:01.0,00:00:02.0,1,2,'
                 'x,take,0,cup,10,[],[]\n')
    (tmp_path / "EPIC_100_verb_classes.csv").write_text("id,key,instances,category\n3,open,\"['open']\",x\n")
    touch(tmp_path / "videos", "P01/videos/P01_01.MP4")
    ann = read_annotations(tmp_path / "EPIC_100_train.csv", video_dir=tmp_path / "videos")
    assert detect_format(tmp_path / "EPIC_100_train.csv") == "epic"
    assert ann.heads == {"verb": 97, "noun": 300} and ann.num_classes == 397
    r0, r1 = ann.records
    assert (r0.start, r0.end, r0.labels) == (0.14, 3.37, (3, 97 + 3))
    assert (r1.start, r1.end, r1.labels) == (64.02, 65.5, (6, 97 + 114))
    assert ann.label_names[3] == "verb:open" and ann.label_names[97 + 3] == "noun:3"
    v = ann.label_vector(r0)
    assert v[:97].sum() == 1 and v[97:].sum() == 1 and v[3] == 1 and v[100] == 1
    assert ann.missing_files == ["P02_03_0"]


def test_kinetics(tmp_path):
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                                        "abseiling,---QUuC4vJs,3,13,train,0\nzumba,--3ouPhoy2A,20,30,train,0\n")
    touch(tmp_path / "k400", "abseiling/---QUuC4vJs_000003_000013.mp4", "zumba/--3ouPhoy2A_000020_000030.mp4")
    ann = read_annotations(tmp_path / "train.csv", video_dir=tmp_path / "k400")
    assert detect_format(tmp_path / "train.csv") == "kinetics"
    assert ann.label_names == ["abseiling", "zumba"] and [r.labels for r in ann.records] == [(0,), (1,)]
    with pytest.raises(AnnotationError, match=r"train.csv:3: label 'zumba' is not among the 1 label names"):
        read_kinetics(tmp_path / "train.csv", tmp_path / "k400", label_names=["abseiling"])


def test_plain_csv(tmp_path):
    touch(tmp_path, "a.mp4", "clips/b.webm")
    (tmp_path / "list.csv").write_text("path,label,start,end\na.mp4,dog;bark,1.5,4\nclips/b.webm,cat,,\n"
                                       "gone.mp4,cat,,\n")
    ann = read_csv(tmp_path / "list.csv")
    assert ann.label_names == ["bark", "cat", "dog"] and ann.multi_label
    assert [(r.labels, r.start, r.end) for r in ann.records] == [((0, 2), 1.5, 4.0), ((1,), None, None)]
    assert ann.missing_files == ["gone.mp4"]
    (tmp_path / "names.txt").write_text("cat\ndog\nbark\nbird\n")
    shared = read_annotations(tmp_path / "list.csv", labels=tmp_path / "names.txt")
    assert shared.label_names == ["cat", "dog", "bark", "bird"] and shared.records[0].labels == (1, 2)
    (tmp_path / "bad.csv").write_text("a.mp4,dog,5,2\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:1: end 2.0 is not after start 5.0"):
        read_csv(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("a.mp4,dog,5\n")
    with pytest.raises(AnnotationError, match=r"bad2.csv:1: expected path,label or path,label,start,end"):
        read_csv(tmp_path / "bad2.csv")


@pytest.mark.parametrize("header", ["path,label", "file,label", "video,labels", "filename,label,start,end", None])
def test_plain_csv_header_variants(tmp_path, header):
    touch(tmp_path, "a.mp4", "b.mp4")
    rows = "a.mp4,cat,,\nb.mp4,dog,,\n" if header and header.endswith("end") else "a.mp4,cat\nb.mp4,dog\n"
    (tmp_path / "l.csv").write_text((header + "\n" if header else "") + rows)
    ann = read_csv(tmp_path / "l.csv")
    assert ann.label_names == ["cat", "dog"] and ann.missing_files == [] and len(ann.records) == 2


def test_epic_bad_rows_name_the_line(tmp_path):
    header = "narration_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
    (tmp_path / "a.csv").write_text(header + "n,v,00:00:01.0,00:00:02.0,,3\n")
    with pytest.raises(AnnotationError, match=r"a.csv:2: verb_class '' and noun_class '3' must be integers"):
        read_epic_kitchens(tmp_path / "a.csv", tmp_path)
    (tmp_path / "b.csv").write_text(header + "n,v,00:00:01.0\n")
    with pytest.raises(AnnotationError, match=r"b.csv:2: 3 fields, the header has 6"):
        read_epic_kitchens(tmp_path / "b.csv", tmp_path)


def test_missing_inputs_are_clear(tmp_path):
    with pytest.raises(AnnotationError, match="nope.csv: no such annotation file"):
        read_annotations(tmp_path / "nope.csv")
    (tmp_path / "v.csv").write_text("x,1,a,train\n")
    with pytest.raises(AnnotationError, match="video folder does not exist"):
        read_vggsound(tmp_path / "v.csv", tmp_path / "novideos")
    with pytest.raises(AnnotationError, match="give the folder that holds the videos"):
        read_vggsound(tmp_path / "v.csv", None)
    with pytest.raises(AnnotationError, match="unknown annotation format 'xml'"):
        read_annotations(tmp_path / "v.csv", format="xml")
    (tmp_path / "e.csv").write_text("narration_id,video_id,start_timestamp,stop_timestamp\nn,v,00:01,00:02\n")
    with pytest.raises(AnnotationError, match=r"e.csv:2: timestamp '00:01' is not HH:MM:SS.ff"):
        read_epic_kitchens(tmp_path / "e.csv", tmp_path)


def test_clip_bounds_rule():
    full = Record("f", (0,), 30.0, 40.0)
    assert clip_bounds(full, duration=300.0) == (30.0, 40.0)  # a full video: the annotated part
    assert clip_bounds(full, duration=10.0) == (0.0, 10.0)  # already cut to the clip: the whole file
    assert clip_bounds(Record("f", (0,)), duration=7.5) == (0.0, 7.5)
    assert clip_bounds(Record("f", (0,), 2.0, None), duration=7.5) == (2.0, 7.5)
    assert clip_bounds(Record("f", (0,), 30.0, 40.0), duration=39.8) == (30.0, 39.8)  # a few ms short: same clip


def test_plain_csv_with_several_label_columns_is_multi_head(tmp_path):
    """A header naming several label columns gives one head per column: class names 'head:value' (sorted within
    a head), a label vector one-hot per head, a shared label space from the training names, and errors that name
    the line for a value outside the given names or a short row."""
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4")
    (tmp_path / "tr.csv").write_text("path,shown,spoken,match\na.mp4,3,3,match\nb.mp4,1,7,mismatch\n"
                                     "c.mp4,3,1,mismatch\n")
    ann = read_csv(tmp_path / "tr.csv")
    assert ann.heads == {"shown": 2, "spoken": 3, "match": 2} and ann.problem_type == "multi_head"
    assert ann.label_names == ["shown:1", "shown:3", "spoken:1", "spoken:3", "spoken:7", "match:match",
                               "match:mismatch"]
    assert [r.labels for r in ann.records] == [(1, 3, 5), (0, 4, 6), (1, 2, 6)]
    assert ann.label_vector(ann.records[1]).tolist() == [1, 0, 0, 0, 1, 0, 1]
    (tmp_path / "te.csv").write_text("path,shown,spoken,match,start,end\na.mp4,1,1,match,0.5,1.5\n")
    te = read_annotations(tmp_path / "te.csv", labels=ann.label_names)
    assert te.heads == ann.heads and te.records[0].labels == (0, 2, 5)
    assert (te.records[0].start, te.records[0].end) == (0.5, 1.5)
    (tmp_path / "bad.csv").write_text("path,shown,spoken,match\na.mp4,9,1,match\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:2: shown '9' is not among the 2 shown classes"):
        read_annotations(tmp_path / "bad.csv", labels=ann.label_names)
    (tmp_path / "short.csv").write_text("path,shown,spoken,match\na.mp4,9,1\n")
    with pytest.raises(AnnotationError, match=r"short.csv:2: 3 fields, the header has 4"):
        read_csv(tmp_path / "short.csv")
    with pytest.raises(AnnotationError, match=r"label name 'cat' is not 'head:value'"):
        read_annotations(tmp_path / "tr.csv", labels=["cat"])


def test_annotation_content_is_checked(tmp_path):
    """All labels empty, times that are negative or not finite, a file that is not UTF-8: errors naming file:line;
    duplicate rows and a clip listed with other labels: reported with counts in the summary."""
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(b"x")

    def fails(text: str, match: str, data: bytes | None = None) -> None:
        path = tmp_path / "ann.csv"
        path.write_bytes(data if data is not None else text.encode())
        with pytest.raises(AnnotationError, match=match):
            read_annotations(path)

    fails("path,label\na.mp4,\nb.mp4,\n", r"ann.csv:2: no row has a label \(the label column is empty in all 2 rows")
    fails("path,label,start,end\na.mp4,dog,-1,2\n", r"ann.csv:2: start -1 is negative; times are seconds")
    fails("path,label,start,end\na.mp4,dog,0,nan\n", r"ann.csv:2: end 'nan' is not a finite number")
    fails("path,shown,spoken,start,end\na.mp4,1,2,0,inf\n", r"ann.csv:2: end 'inf' is not a finite number")
    fails("", r"ann.csv:3: not UTF-8 text \(byte 0xe9\); save the annotation file as UTF-8",
          data="path,label\na.mp4,dog\nb.mp4,caf\u00e9\n".encode("latin-1"))
    path = tmp_path / "ann.csv"
    path.write_text("path,label\na.mp4,dog\nb.mp4,cat\na.mp4,dog\na.mp4,dog\nb.mp4,dog\nc.mp4,cat\n")
    ann = read_annotations(path)
    assert len(ann.records) == 6  # every row is kept
    summary = ann.summary()
    assert "2 duplicate row(s)" in summary and "(e.g. a.mp4 at lines 2 and 4)" in summary
    assert "1 row(s) give a clip already listed other labels (e.g. b.mp4 at lines 3 and 6)" in summary


def test_a_multi_head_summary_counts_heads_not_classes(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    path = tmp_path / "pair.csv"
    path.write_text("path,shown,spoken,match\na.mp4,1,2,0\nb.mp4,3,3,1\n")
    assert read_annotations(path).summary().endswith("pair.csv: 2 clips, 3 heads (shown 2, spoken 2, match 2 classes)")

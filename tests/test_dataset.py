"""Video lists, indexes and class-name files: parsing and every bad-input case."""
from __future__ import annotations

import os

import pytest

from pipelines.dataset import (DatasetError, VideoRecord, index_path_for, load_records, read_class_names,
                               read_index, read_list, write_index)


def test_read_list_parses_paths_with_spaces_comments_and_blank_lines(tmp_path):
    lst = tmp_path / "train.list"
    lst.write_text("# kinetics\nabseiling/a b.mp4 0\n\n  air drumming/c.mp4   12  \n")
    assert read_list(lst) == [("abseiling/a b.mp4", 0), ("air drumming/c.mp4", 12)]


@pytest.mark.parametrize("text, match", [
    ("a.mp4 zero\n", "label 'zero' is not an integer"),
    ("a.mp4\n", "expected 'path label'"),
    ("a.mp4 -1\n", "label -1 is negative"),
    ("a.mp4 0\nb.mp4 1\na.mp4 2\n", "duplicate entry 'a.mp4' \\(first on line 1\\)"),
    ("a.mp4 0\nb.mp4 1\n./a.mp4 2\n", "duplicate entry './a.mp4' \\(first on line 1 as 'a.mp4'\\)"),
    ("x/../a.mp4 0\na.mp4 1\n", "duplicate entry 'a.mp4' \\(first on line 1 as 'x/../a.mp4'\\)"),
    ("# only a comment\n", "holds no entries"),
])
def test_read_list_rejects_bad_lines(tmp_path, text, match):
    lst = tmp_path / "bad.list"
    lst.write_text(text)
    with pytest.raises(DatasetError, match=match):
        read_list(lst)


def test_read_list_missing_and_unreadable(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_list(tmp_path / "nope.list")
    binary = tmp_path / "binary.list"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="cannot be read"):
        read_list(binary)


def test_index_round_trip_keeps_extra_fields(tmp_path):
    records = [VideoRecord("a.mp4", 1, 300, 29.97, 340, 256, "h264", 10.01, 250, {"source": "yt"})]
    path = write_index(records, index_path_for(tmp_path / "train.list"))
    assert path.name == "train.list.index.jsonl"
    assert read_index(path) == records
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed


def test_load_records_takes_geometry_from_the_index_for_matching_entries(tmp_path):
    lst = tmp_path / "val.list"
    lst.write_text("a.webm 0\nb.webm 1\n")
    assert [r.num_frames for r in load_records(lst, tmp_path)] == [0, 0]
    write_index([VideoRecord("a.webm", 0, 64, 30.0, 128, 96, "vp9"), VideoRecord("b.webm", 1, 32, 25.0, 64, 48, "vp8")],
                index_path_for(lst))
    assert [(r.path, r.label, r.num_frames, r.codec) for r in load_records(lst, tmp_path)] == [
        ("a.webm", 0, 64, "vp9"), ("b.webm", 1, 32, "vp8")]
    # the comparison is by content: a list touched after its index (same content) keeps the geometry
    later = index_path_for(lst).stat().st_mtime + 10
    os.utime(lst, (later, later))
    assert [r.num_frames for r in load_records(lst, tmp_path)] == [64, 32]


def test_load_records_bad_root_and_label_range(tmp_path):
    lst = tmp_path / "val.list"
    lst.write_text("a.webm 0\nb.webm 7\n")
    with pytest.raises(DatasetError, match="data root .*missing.* is not a directory"):
        load_records(lst, tmp_path / "missing")
    with pytest.raises(DatasetError, match=r"label 7 of 'b.webm' is outside \[0, 5\)"):
        load_records(lst, tmp_path, num_classes=5)
    assert len(load_records(lst, tmp_path, num_classes=8)) == 2


def test_class_names(tmp_path):
    assert read_class_names(None, 2) == ["class_0", "class_1"]
    names = tmp_path / "classes.txt"
    names.write_text("abseiling\nair drumming\n")
    assert read_class_names(names, 2) == ["abseiling", "air drumming"]
    with pytest.raises(DatasetError, match="has 2 names but model.num_classes is 3"):
        read_class_names(names, 3)
    with pytest.raises(DatasetError, match="does not exist"):
        read_class_names(tmp_path / "none.txt", 3)

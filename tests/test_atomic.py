"""diffjax.atomic: a reader sees the old file or the whole new one, and a failed write
leaves the old file and nothing else."""
import csv
import json
import os
import threading

import numpy as np
import pytest

from diffjax import atomic


def test_written_files_read_back_and_keep_their_names(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "line\n")
    atomic.write_json(tmp_path / "b.json", {"x": [1, 2]}, sort_keys=True)
    atomic.write_npz(tmp_path / "c.cache", x=np.arange(3.0))   # no ".npz" appended
    rows = [{"w": 1, "note": "a, \"quoted\"\nline"}, {"w": 2.5, "note": ""}]
    atomic.write_csv(tmp_path / "d.csv", rows)
    assert (tmp_path / "a.txt").read_text() == "line\n"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    with np.load(tmp_path / "c.cache") as f:
        np.testing.assert_array_equal(f["x"], [0.0, 1.0, 2.0])
    with open(tmp_path / "d.csv", newline="", encoding="utf-8") as f:   # the csv module's
        assert list(csv.DictReader(f)) == [{"w": "1", "note": rows[0]["note"]},  # own reader
                                           {"w": "2.5", "note": ""}]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json", "c.cache", "d.csv"]


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    atomic.write_json(path, {"step": 1})
    with pytest.raises(TypeError):   # json.dump has written '{"a": 1, "b": ' when it fails
        atomic.write_json(path, {"a": 1, "b": object()})
    with pytest.raises(OSError):
        atomic.write_text(tmp_path / "missing_dir" / "x.txt", "never")
    atomic.write_csv(tmp_path / "t.csv", [{"a": 1}])
    with pytest.raises(ValueError):   # the second row has a column the header lacks
        atomic.write_csv(tmp_path / "t.csv", [{"a": 2}, {"a": 3, "b": 4}])
    assert json.loads(path.read_text()) == {"step": 1}
    assert (tmp_path / "t.csv").read_bytes() == b"a\r\n1\r\n"
    assert sorted(os.listdir(tmp_path)) == ["record.json", "t.csv"]


def test_concurrent_writers_of_one_file_leave_one_whole_version(tmp_path):
    path = tmp_path / "shared.npz"
    versions = {i: np.full(50_000, float(i)) for i in range(4)}

    def write(i):
        for _ in range(5):
            atomic.write_npz(path, x=versions[i])

    threads = [threading.Thread(target=write, args=(i,)) for i in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with np.load(path) as f:
        x = f["x"]
    assert any(np.array_equal(x, v) for v in versions.values())
    assert os.listdir(tmp_path) == ["shared.npz"]


def test_a_published_directory_appears_whole_the_first_publisher_wins_a_failure_leaves_none(
        tmp_path):
    final = tmp_path / "cache" / "entry"   # its parent is created
    with atomic.publishing_dir(final) as tmp:
        assert not final.exists()   # nothing at the final name while it is being built
        (tmp_path / "cache" / os.path.basename(tmp) / "meta.json").write_text("first")
    assert (final / "meta.json").read_text() == "first"
    with atomic.publishing_dir(final) as tmp:   # a second builder loses the race quietly
        (tmp_path / "cache" / os.path.basename(tmp) / "meta.json").write_text("second")
    assert (final / "meta.json").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic.publishing_dir(tmp_path / "cache" / "other"):
            raise RuntimeError("the build failed")
    assert os.listdir(tmp_path / "cache") == ["entry"]   # no partial directory, no temporary
    # What stands at the name is not a finished entry: the rename's error is not swallowed.
    (tmp_path / "cache" / "partial").mkdir()
    (tmp_path / "cache" / "partial" / "half").write_text("")
    with pytest.raises(OSError):
        with atomic.publishing_dir(tmp_path / "cache" / "partial",
                                   complete=lambda: False) as tmp:
            (tmp_path / "cache" / os.path.basename(tmp) / "meta.json").write_text("x")
    assert sorted(os.listdir(tmp_path / "cache")) == ["entry", "partial"]

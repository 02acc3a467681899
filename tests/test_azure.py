"""Azure trace readers: the real 2019 rows, plus durations, memory and 2021 rows written here."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import pytest

from loadgen.azure import (
    DURATION_HEADER,
    MEMORY_HEADER,
    BadRows,
    TraceError,
    read_durations_2019,
    read_invocations_2019,
    read_invocations_2021,
    read_memory_2019,
)

DATA = Path(__file__).resolve().parents[1] / "loadgen" / "data"
REAL = DATA / "azure2019_invocations_first9rows.csv"


def test_real_2019_rows_match_the_readme() -> None:
    rows = list(read_invocations_2019(REAL))
    assert len(rows) == 9
    assert [sum(r.counts) for r in rows] == [288, 288, 10, 11, 9, 10, 3, 10, 432]
    assert sorted(r.trigger for r in rows).count("http") == 7
    assert all(len(r.counts) == 1440 and len(r.function) == 64 for r in rows)
    assert len({r.app for r in rows}) == 3


def test_2019_gzip_reads_the_same(tmp_path: Path) -> None:
    gz = tmp_path / "d01.csv.gz"
    with open(REAL, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert list(read_invocations_2019(gz)) == list(read_invocations_2019(REAL))


def _write(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_durations_and_memory(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "dur.csv",
        [
            DURATION_HEADER,
            ["o", "a", "f", "120.5", "7", "3", "900", "3", "4", "50", "100", "150", "800", "900"],
        ],
    )
    (rec,) = read_durations_2019(d)
    assert (rec.function, rec.average_ms, rec.count) == ("f", 120.5, 7)
    assert rec.percentiles_ms["p50"] == 100 and rec.percentiles_ms["max"] == 900
    m = _write(
        tmp_path / "mem.csv",
        [
            MEMORY_HEADER,
            ["o", "a", "12", "150", "100", "110", "130", "140", "160", "180", "190", "200"],
        ],
    )
    (app,) = read_memory_2019(m)
    assert (app.app, app.samples, app.average_mb) == ("a", 12, 150.0)
    assert app.percentiles_mb["p95"] == 180 and app.percentiles_mb["p100"] == 200


def test_2021_arrival_is_end_minus_duration(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "t.txt",
        [
            ["app", "func", "end_timestamp", "duration"],
            ["A", "x", "10.5", "0.5"],
            ["A", "y", "3", "0"],
        ],
    )
    rows = list(read_invocations_2021(p))
    assert [(r.app, r.func, r.arrival, r.duration) for r in rows] == [
        ("A", "x", 10.0, 0.5),
        ("A", "y", 3.0, 0.0),
    ]


def test_missing_header_names_the_file(tmp_path: Path) -> None:
    lines = REAL.read_text().splitlines()
    p = tmp_path / "noheader.csv"
    p.write_text("\n".join(lines[1:]))
    with pytest.raises(TraceError, match=r"noheader.csv:1: missing header"):
        list(read_invocations_2019(p))


def test_bad_rows_stop_with_file_and_line_or_are_counted(tmp_path: Path) -> None:
    lines = REAL.read_text().splitlines()
    short = lines[2].rsplit(",", 1)[0]  # one column fewer
    nonnum = lines[3].split(",")
    nonnum[10] = "lots"
    p = tmp_path / "bad.csv"
    p.write_text("\n".join([lines[0], lines[1], short, ",".join(nonnum), lines[4]]) + "\n")
    with pytest.raises(TraceError, match=r"bad.csv:3: expected 1444 columns, got 1443"):
        list(read_invocations_2019(p))
    fixed = tmp_path / "bad2.csv"
    fixed.write_text("\n".join([lines[0], ",".join(nonnum)]) + "\n")
    with pytest.raises(TraceError, match=r"bad2.csv:2: count of minute 7 'lots' is not an integer"):
        list(read_invocations_2019(fixed))
    bad = BadRows()
    assert len(list(read_invocations_2019(p, bad))) == 2
    assert bad.count == 2 and "bad.csv:3" in bad.examples[0]


def test_2021_bad_values(tmp_path: Path) -> None:
    head = ["app", "func", "end_timestamp", "duration"]
    p = _write(tmp_path / "t.txt", [head, ["A", "x", "ten", "1"]])
    with pytest.raises(TraceError, match=r"t.txt:2: end_timestamp 'ten' is not a number"):
        list(read_invocations_2021(p))
    q = _write(tmp_path / "u.txt", [head, ["A", "x", "5", "-1"]])
    with pytest.raises(TraceError, match=r"u.txt:2: duration '-1' is negative"):
        list(read_invocations_2021(q))
    with pytest.raises(TraceError, match="no such file"):
        list(read_invocations_2021(tmp_path / "missing.txt"))

"""The demo's live table: one header, rows aligned to it however kubectl sized each call,
and no row printed twice."""

from __future__ import annotations

from tempotrain_dev.demo import LiveTable

FIRST = """NAME   PHASE     STEP     LOSS     AGE
job    Pending   <none>   <none>   1s"""
LATER = """NAME   PHASE      STEP   LOSS       AGE
job    Training   8      0.004681   5s"""
SAME_BUT_OLDER = """NAME   PHASE      STEP   LOSS       AGE
job    Training   8      0.004681   9s"""


def test_rows_line_up_under_one_header_and_repeats_are_dropped() -> None:
    table = LiveTable()
    printed = table.lines(FIRST) + table.lines(LATER) + table.lines(SAME_BUT_OLDER)
    assert len(printed) == 3  # the header, Pending, Training: the third call only aged
    header, pending, training = printed
    assert header.startswith("NAME") and header.count("NAME") == 1
    for column in ("PHASE", "STEP", "LOSS"):
        start = header.index(column)
        assert training[start - 1] == " " and training[start] != " ", (column, printed)
    assert pending.index("Pending") == header.index("PHASE")


# What `kubectl get binf` prints before a job has numbers: empty cells, no `<none>`.
EMPTY_CELLS = """NAME     PHASE     CHUNKS   SKIPPED   ROWS/S   SUSPEND   AGE
scores   Pending                                false     1s"""
FILLED = """NAME     PHASE       CHUNKS   SKIPPED   ROWS/S   SUSPEND   AGE
scores   Succeeded   20/20    0         177.5    false     12s"""
TWO_WORD_HEADER = """NAME   PHASE     DONE   BEST ACCURACY   SUSPEND   AGE
run    Pending   0/2                    false     1s"""


def test_empty_cells_stay_in_their_column() -> None:
    table = LiveTable()
    header, pending = table.lines(EMPTY_CELLS)
    assert pending.index("false") == header.index("SUSPEND"), (header, pending)
    (done,) = table.lines(FILLED)
    assert done.index("20/20") == header.index("CHUNKS")
    assert done.index("false") == header.index("SUSPEND")
    header, pending = LiveTable().lines(TWO_WORD_HEADER)
    assert "BEST ACCURACY" in header
    assert pending.index("false") == header.index("SUSPEND"), (header, pending)

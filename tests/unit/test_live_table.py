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

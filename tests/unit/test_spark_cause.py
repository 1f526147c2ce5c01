"""A failed Spark job is reported in one line that quotes no executor's message but ours."""

from __future__ import annotations

from ketapredict.spark_engine import _cause

TRACE = 'Job aborted.\nTraceback (most recent call last):\n  File "x.py", line 1\n{}\n'


def test_an_executor_message_is_reduced_to_its_type() -> None:
    exc = Exception(TRACE.format("KeyError: 'PSEUDO-123' age_years=41"))
    assert _cause(exc) == "KeyError"


def test_our_value_free_messages_are_kept() -> None:
    root = "serving.audit.store.AuditUnavailable: audit write failed (OperationalError)"
    assert _cause(Exception(TRACE.format(root))) == root
    assert _cause(RuntimeError("no traceback here")) == "RuntimeError"

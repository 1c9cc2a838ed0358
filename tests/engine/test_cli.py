"""The frame of the tools' main(): bad input is one line and exit status 2, the rest propagates."""

import pytest

from lite_detr.config import ConfigError
from lite_detr.engine.cli import one_line, run_tool


def _fail(exc):
    def body():
        raise exc

    return body


def test_config_error_is_one_line_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as e:
        run_tool("tool.py", _fail(ConfigError("train.max_iter must be an integer")))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "tool.py: error: train.max_iter must be an integer"


def test_listed_errors_too_and_others_propagate(capsys):
    with pytest.raises(SystemExit) as e:
        run_tool("tool.py", _fail(ValueError("input too small")), errors=(ValueError,))
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("tool.py: error: input too small")
    with pytest.raises(RuntimeError, match="out of memory"):
        run_tool("tool.py", _fail(RuntimeError("out of memory")), errors=(ValueError,))
    assert run_tool("tool.py", lambda: 42) == 42


def test_one_line_keeps_the_last_line_of_a_worker_traceback():
    e = ConfigError("Caught X in DataLoader worker.\nTraceback:\n  ...\nBad image a.jpg\n")
    assert one_line(e) == "Bad image a.jpg"
    assert one_line(ValueError()) == "ValueError"

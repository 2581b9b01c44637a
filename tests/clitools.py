"""Checking the bad-input contract of the command-line tools."""

from __future__ import annotations


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        self.err_lines = [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """The bad-input contract: non-zero exit, exactly one line on stderr, no traceback, naming the thing."""
    assert result.code != 0, f"expected failure, got exit 0; stderr: {result.err}"
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, f"expected one error line, got: {result.err_lines}"
    for needle in needles:
        assert needle in result.err_lines[0], f"{needle!r} not in {result.err_lines[0]!r}"

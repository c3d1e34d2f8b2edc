"""Helpers shared by the CLI tests (not a test module)."""

from __future__ import annotations


def one_line_error(result) -> str:
    """The single ``error: ...`` line of a CLI run that failed with exit code 2 (typer's
    ``CliRunner`` result); asserts there is exactly one non-empty output line and no traceback."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]

"""Assertions shared by the CLI tests."""


def one_line_error(result, *fragments):
    """A failed command: non-zero exit, no traceback, exactly one ``error:`` line containing ``fragments``."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]

"""Assertions and recipe files shared by the CLI tests."""

import copy

import yaml


def write_recipe(path, base: dict, **changes):
    """``base`` (a recipe as a dict) with ``section.key=value`` changes, written as YAML to ``path``."""
    recipe = copy.deepcopy(base)
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        recipe[section][key] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def one_line_error(result, *fragments):
    """A failed command: non-zero exit, no traceback, exactly one ``error:`` line containing ``fragments``."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]

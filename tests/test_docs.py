"""The README stays true: its test command is what CI runs, and its target table is the registry's."""

from __future__ import annotations

import re
from pathlib import Path

from edgepack.exporters.registry import available_runtimes
from edgepack.targets.table import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r'TEST_COMMAND="(.+)"', ci).group(1)
    assert f"\n{command}\n" in readme


def test_readme_target_table_matches_the_registry(registry):
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- targets:begin -->\n", 1)[1].split("<!-- targets:end -->", 1)[0]
    assert table.strip() == markdown_table(registry, set(available_runtimes())).strip()


def test_readme_states_the_hostile_input_count():
    from tests.test_hostile_inputs import CASES

    readme = (ROOT / "README.md").read_text()
    tried, clean = re.search(r"Hostile inputs: (\d+) tried, (\d+) clean errors", readme).groups()
    assert int(tried) == int(clean) == len(CASES)

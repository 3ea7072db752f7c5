"""The README and docs/ stay true: the README's test command is what CI runs, its target table is the
registry's, the hostile-input count is the suite's, and every relative link points into the repository."""

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


HOSTILE_LINE = re.compile(r"Hostile inputs: (\d+) tried, (\d+) clean errors")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_reliability_page_states_the_hostile_input_count():
    from tests.test_hostile_inputs import CASES

    reliability = (ROOT / "docs" / "reliability.md").read_text()
    tried, clean = HOSTILE_LINE.search(reliability).groups()
    assert int(tried) == int(clean) == len(CASES)
    for page in _pages():  # any other page that repeats the line repeats the same numbers
        for tried, clean in HOSTILE_LINE.findall(page.read_text()):
            assert int(tried) == int(clean) == len(CASES), page


def test_readme_is_a_landing_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_relative_links_point_into_the_repository():
    broken = []
    for page in _pages():
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # URLs and same-page anchors
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or not path.is_relative_to(ROOT):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in LINK.findall(readme)}
    assert [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked] == []


def test_docs_cite_nothing_outside_the_repository():
    for page in _pages():
        text = page.read_text()
        assert "DESIGN.md" not in text and "FIELD-NOTES" not in text, page

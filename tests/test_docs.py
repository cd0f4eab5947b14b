"""The documentation's tutorial notebooks (docs/tutorials/), without building the site: the
site's strict build (docs/build.sh, run by CI) executes them. Here, in a fraction of a second:
one notebook per system of the seed tutorials, each in the site's navigation, committed without
outputs (the outputs on the site come from the build), and each names the test that checks its
numbers, which must exist, so that renaming or deleting that test is noticed."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
# one per system the seed texts describe (DESIGN.md's table)
SYSTEMS = ["pointers", "federated-mnist", "split", "websocket", "duet"]
CHECKED_BY = re.compile(r"tests/(test_\w+\.py)(?:::(\w+))?")


def _cells(name: str) -> list[dict]:
    return json.loads((TUTORIALS / f"{name}.ipynb").read_text())["cells"]


def test_every_system_has_a_tutorial_in_the_sites_navigation() -> None:
    assert sorted(p.stem for p in TUTORIALS.glob("*.ipynb")) == sorted(SYSTEMS)
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in SYSTEMS:
        assert f"tutorials/{name}.ipynb" in nav, name


@pytest.mark.parametrize("name", SYSTEMS)
def test_a_tutorial_is_committed_without_outputs(name: str) -> None:
    code = [cell for cell in _cells(name) if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] for cell in code), name


@pytest.mark.parametrize("name", SYSTEMS)
def test_a_tutorial_names_the_existing_test_that_checks_its_numbers(name: str) -> None:
    text = "".join(
        "".join(cell["source"]) for cell in _cells(name) if cell["cell_type"] == "markdown"
    )
    named = CHECKED_BY.findall(text)
    assert named, f"{name}.ipynb names no test"
    for file, function in named:
        path = ROOT / "tests" / file
        assert path.exists(), (name, file)
        if function:
            tree = ast.parse(path.read_text())
            functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert function in functions, (name, file, function)

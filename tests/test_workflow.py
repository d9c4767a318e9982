"""The GitHub Pages workflow is valid and builds the way the README says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def actionlint() -> str:
    beside_python = Path(sys.executable).with_name("actionlint")
    found = str(beside_python) if beside_python.exists() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is not installed: it is part of the dev extra")
    return found


def test_workflow_passes_actionlint():
    result = subprocess.run(
        [actionlint(), str(WORKFLOW)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_builds_with_make_and_deploys_only_from_main():
    text = WORKFLOW.read_text()
    assert text.count("make book-published") == 2
    assert "actions/deploy-pages" in text
    assert "if: github.event_name == 'pull_request'" in text
    assert "if: github.event_name != 'pull_request'" in text
    makefile = (ROOT / "Makefile").read_text()
    assert "book-published:" in makefile
    assert "book-only:" in makefile
    assert "book-zip:" in makefile

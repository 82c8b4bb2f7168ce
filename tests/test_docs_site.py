"""The documentation site (mkdocs.yml, docs/) and the short README that points into it.

The site is built with `mkdocs build --strict` as CI would: a broken link or anchor, a page missing from the nav
or a nav entry without its page fails the build (mkdocs.yml's `validation` block turns each into a warning, and
--strict turns warnings into errors). The README stays a front door (under 250 lines), and its methods × tasks
table says what the repository holds: committed records and paper recipes.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# Material for MkDocs prints an end-of-life banner on every build; it is not a warning of the build's.
QUIET_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def mkdocs_build(config: Path, site_dir: Path) -> subprocess.CompletedProcess:
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]' (or '.[docs]') installs the site's tools")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site_dir)],
                          cwd=ROOT, env=QUIET_ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    proc = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-4000:]}"
    return site


def test_site_builds_strict_with_generated_pages(built_site):
    assert (built_site / "index.html").is_file()
    # The Python API page is generated from harness/api.py's docstrings (mkdocstrings): the first line of
    # run()'s docstring must be on it, so a page that rendered nothing would fail here.
    from harness import api
    first_line = api.run.__doc__.strip().splitlines()[0]
    api_page = (built_site / "user-guide" / "python-api.html").read_text()
    assert "SweepResult" in api_page
    assert re.sub(r"`([^`]*)`", r"<code>\1</code>", first_line.split(";")[0]) in api_page
    # The local cluster's page is scripts/SLURM.md included whole: its first heading is on it.
    slurm_title = (ROOT / "scripts" / "SLURM.md").read_text().splitlines()[0].lstrip("# ").strip()
    assert slurm_title in (built_site / "user-guide" / "slurm-cluster.html").read_text()
    # The synthetic task's pre-registration is its module docstring, rendered on the calibration study's page.
    assert "PRE-REGISTERED" in (built_site / "studies" / "synthetic_calibration.html").read_text()


class _ConfigLoader(yaml.SafeLoader):
    """mkdocs.yml as data: MkDocs' own tags (!ENV, !relative, !!python/name:...) read as plain values."""


_ConfigLoader.add_multi_constructor("", lambda loader, tag, node: None)
_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, tag, node: None)


def site_config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_ConfigLoader)


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    return []


# Pages docs/hooks/reference.py writes at build time (no file in docs/); the built site must have them
# (tests/test_docs_reference.py::test_site_builds_with_every_link_and_anchor_of_the_generated_pages).
HOOK_WRITES = {"reference/config.md", "reference/cli.md", "leaderboard.md"}


def test_every_docs_page_is_in_the_nav_or_deliberately_left_out():
    config = site_config()
    in_nav = set(_nav_pages(config["nav"]))
    folders = {entry for entry in in_nav if entry.endswith("/")}  # a folder in the nav stands for its pages
    left_out = [pattern for pattern in (config.get("not_in_nav") or "").split() if pattern]
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    missing = sorted(page for page in pages - in_nav
                     if not any(page.startswith(folder) for folder in folders)
                     and not any(fnmatch.fnmatch(page, pattern.lstrip("/")) for pattern in left_out))
    assert not missing, f"docs pages in neither mkdocs.yml's nav nor its not_in_nav: {missing}"
    dangling = sorted(entry for entry in in_nav - pages - folders - HOOK_WRITES if "://" not in entry)
    assert not dangling, f"nav entries without a page in docs/: {dangling}"


def _tiny_site(tmp_path: Path, pages: dict[str, str], nav: list) -> Path:
    """A site with mkdocs.yml's own `validation` settings, the default theme and the given pages."""
    validation = site_config()["validation"]
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in pages.items():
        (docs / name).write_text(text)
    config = tmp_path / "mkdocs.yml"
    config.write_text(yaml.safe_dump({"site_name": "t", "docs_dir": str(docs), "nav": nav,
                                      "validation": validation}))
    return config


@pytest.mark.parametrize("case", ["ok", "broken link", "broken anchor", "page not in nav", "nav without page"])
def test_strict_build_fails_on_what_the_site_promises(tmp_path, case):
    """The claim of mkdocs.yml and docs/development.md, checked on a two-page site: each defect fails --strict,
    and the same site without it builds."""
    pages = {"index.md": "# Home\n\nSee [the other page](other.md#part).\n", "other.md": "# Other\n\n## Part\n"}
    nav = ["index.md", "other.md"]
    if case == "broken link":
        pages["index.md"] += "\n[gone](gone.md)\n"
    elif case == "broken anchor":
        pages["index.md"] += "\n[no such part](other.md#no-such-part)\n"
    elif case == "page not in nav":
        pages["stray.md"] = "# Stray\n"
    elif case == "nav without page":
        nav.append("gone.md")
    proc = mkdocs_build(_tiny_site(tmp_path, pages, nav), tmp_path / "site")
    if case == "ok":
        assert proc.returncode == 0, proc.stderr[-2000:]
    else:
        assert proc.returncode != 0, f"{case}: the strict build passed"
        assert "WARNING" in proc.stderr


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines: move reference text into docs/"
    text = "\n".join(lines)
    # The two commands CI relies on (.ci/run runs scripts/setup.sh, then scripts/test.sh).
    assert "bash scripts/setup.sh" in text and "bash scripts/test.sh" in text
    # Every relative link of the README leads to a file of the repository.
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def _readme_grid() -> tuple[list[str], dict[str, dict[str, str]]]:
    table = [line for line in README.read_text().splitlines() if line.startswith("| ")]
    header = next(line for line in table if line.startswith("| method | what |"))
    tasks = [cell.strip() for cell in header.strip("|").split("|")][2:]
    rows = {}
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if re.fullmatch(r"`\w+`", cells[0]) and len(cells) == len(tasks) + 2:
            rows[cells[0].strip("`")] = dict(zip(tasks, cells[2:]))
    return tasks, rows


def test_readme_methods_tasks_table_matches_the_repository():
    """●: the pair has committed records under results/; R: it is an arm of a recipe in harness/conf/recipe/."""
    from methods import CATALOGUE as METHODS
    from tasks import CATALOGUE as TASKS

    tasks, rows = _readme_grid()
    assert sorted(tasks) == sorted(TASKS)
    assert sorted(rows) == sorted(METHODS)
    recorded = {(path.parts[-3], path.parts[-4])   # results/<task>/<method>/<run>/record.json
                for path in (ROOT / "results").glob("*/*/*/record.json")}
    in_recipes = set()
    for recipe in (ROOT / "harness" / "conf" / "recipe").glob("*.yaml"):
        spec = yaml.safe_load(recipe.read_text())
        for arm in spec["arms"]:
            in_recipes |= {(o.split("=", 1)[1], spec["task"]) for o in arm["overrides"] if o.startswith("method=")}
    shown_recorded = {(m, t) for m, cells in rows.items() for t, cell in cells.items() if "●" in cell}
    shown_recipes = {(m, t) for m, cells in rows.items() for t, cell in cells.items() if "R" in cell.split()}
    assert shown_recorded == recorded, (f"README's ● cells differ from results/: missing {recorded - shown_recorded}, "
                                        f"extra {shown_recorded - recorded}")
    assert shown_recipes == in_recipes, (f"README's R cells differ from the recipes: missing "
                                         f"{in_recipes - shown_recipes}, extra {shown_recipes - in_recipes}")

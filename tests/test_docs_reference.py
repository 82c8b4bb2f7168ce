"""The generated reference pages (docs/hooks/reference.py) against the code they are generated from.

The configuration reference must list every key of every table of harness/schema.py, under its option's heading,
with what the entry accepts and the default its YAML file gives (read here with PyYAML, not with the hook's
ruamel reader or Hydra); the CLI reference every subcommand of the parser with its usage and options; every
method and task of the catalogues has a card whose generated table holds all of its keys; and the site builds
with every link and anchor of these pages found.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import schema
from harness.cli import build_parser
from harness.schema import show

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "harness" / "conf"


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs/hooks/reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def unescape(cell: str) -> str:
    return cell.replace("\\|", "|").replace("&lt;", "<").replace("\\*", "*").replace("&amp;", "&").strip()


def tables_by_heading(markdown: str) -> dict[str, dict[str, list[str]]]:
    """{heading text: {first cell: the row's cells}} of every table under each heading (## or ###)."""
    out: dict[str, dict[str, list[str]]] = {}
    heading = ""
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            out.setdefault(heading, {})
        elif line.startswith("| `"):
            cells = [unescape(c) for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            out[heading][cells[0].strip("`")] = cells
    return out


def flat(node: dict, prefix: str = "") -> dict:
    """Dotted leaf keys of YAML data; a flow mapping (kernel_by_modality: {}) is one value when the schema says so."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in FLAT_MAPPINGS:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# the entries whose value is a mapping (dict_()): every other YAML mapping is a section
FLAT_MAPPINGS = {"kernel_by_modality", "attn_dropout_by_modality", "input_dropout_by_modality",
                 "additional_parameters"}


def yaml_defaults(group: str, name: str) -> dict:
    """The option's keys and defaults from its YAML file with PyYAML; a launcher's `defaults: [slurm]` merged."""
    if group == "":
        data = yaml.safe_load((CONF / "config.yaml").read_text())
    elif group == "extract":
        data = yaml.safe_load((CONF / "extract.yaml").read_text())
    else:
        data = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
    data.pop("defaults", None) if group in ("", "extract") else None
    if group == "launcher":
        base = {}
        for parent in (data.pop("defaults", None) or []):
            if isinstance(parent, str) and parent != "_self_":
                base = yaml_defaults("launcher", parent)
        return {**base, **flat(data.get("launcher", data))}
    return flat(data)


def option_tables():
    """(heading of its section in the reference, group, name, schema table) of every option."""
    yield "Run keys", "", "", schema.ROOT
    for group in ("method", "task", "launcher"):
        for name, table in schema.GROUP_TABLES[group].items():
            yield f"`{group}={name}`", group, name, table
    yield "`harness extract`", "extract", "", schema.EXTRACT_ROOT
    for name, table in schema.BACKBONES.items():
        yield f"`backbone={name}`", "backbone", name, table


def test_config_reference_lists_every_schema_key_with_what_it_accepts_and_its_default(hook):
    tables = tables_by_heading(hook.config_reference())
    n_keys = 0
    for heading, group, name, table in option_tables():
        assert heading in tables, f"no section {heading} in the configuration reference"
        rows = tables[heading]
        defaults = yaml_defaults("backbone" if group == "backbone" else group, name)
        prefix = f"{group}." if group in ("method", "task", "launcher", "backbone") else ""
        for key, entry in table.items():
            cells = rows.get(prefix + key)
            assert cells is not None, f"{heading}: no row for {prefix + key}"
            assert cells[2] == entry.describe(), (heading, key)
            want = f"`{show(defaults[key])}`" if key in defaults else "absent"
            if isinstance(defaults.get(key), str) and "${" in defaults[key]:
                want = f"`{defaults[key]}`"  # an interpolation is shown as written
            assert cells[1] == want, (heading, key, cells[1], want)
            n_keys += 1
        # and no row that is not a key of the option's table
        assert sorted(set(rows) - {prefix + k for k in table}) == [], heading
    assert n_keys > 400  # every table was reached (ROOT alone has ~70 entries, DMD ~50)


def test_config_reference_keeps_the_yaml_comments(hook):
    tables = tables_by_heading(hook.config_reference())
    # an inline comment with its continuation lines, and a nested key's
    assert tables["Run keys"]["log_every"][3] == (
        "the record keeps every k-th epoch of each model's log, plus the first, the selected and the last "
        "(1000-epoch budget runs); not part of the run key; the live logger still gets every epoch")
    assert tables["`method=pkdot`"]["method.tnet.patience"][3] == \
        "epochs without a lower validation loss before stopping"
    assert "λ of PKDOT_kfold.py" == tables["`method=pkdot`"]["method.ot_weight"][3]


def test_comment_reader_splits_inline_continuation_and_heading_comments(hook, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# opening line one\n# opening line two\n"
                    "a: 1        # inline of a\n"
                    "            # continued\n"
                    "\n"
                    "# heading of the next block\n"
                    "b:\n"
                    "  c: true   # inline of c\n"
                    "  # a note of section b\n"
                    "d: [1, 2]\n")
    opening, entries = hook.read_comments(path)
    assert opening == "opening line one\nopening line two"
    assert list(entries) == ["a", "b", "b.c", "d"]
    assert entries["a"].comment == "inline of a continued" and entries["a"].header == ""
    assert entries["b"].header == "heading of the next block" and entries["b"].section
    assert entries["b.c"].comment == "inline of c" and not entries["b.c"].section
    assert entries["b"].notes == ["a note of section b"]
    assert entries["d"].comment == "" and not entries["d"].section and entries["d"].header == ""


def test_cli_reference_lists_every_subcommand_with_its_usage_and_options(hook):
    text = hook.cli_reference()
    parser = build_parser()
    names = re.search(r"\{([\w,]+)\}", parser.format_usage()).group(1).split(",")
    assert len(names) >= 9
    for name in names:
        section = text.split(f"## `harness {name}`", 1)
        assert len(section) == 2, f"no section for harness {name}"
        body = section[1].split("\n## ", 1)[0]
        assert f"usage: harness {name}" in body
        sub = parser._subparsers._group_actions[0].choices[name]
        options = {o for a in sub._actions for o in a.option_strings} - {"-h", "--help"}
        assert all(o in sub.format_help() for o in options)  # what `harness NAME --help` shows
        for option in options:
            assert f"`{option}`" in body, (name, option)


CATALOGUES = {"method": sorted(__import__("methods").CATALOGUE), "task": sorted(__import__("tasks").CATALOGUE)}


@pytest.mark.parametrize("group", ["method", "task"])
def test_every_method_and_task_has_a_card_with_all_its_keys(hook, group):
    folder = ROOT / "docs" / f"{group}s"
    assert sorted(p.stem for p in folder.glob("*.md") if p.stem != "index") == CATALOGUES[group]
    for name in CATALOGUES[group]:
        text = (folder / f"{name}.md").read_text()
        assert f"<!-- harness:config {group} {name} -->" in text and f"<!-- harness:results {group} {name} -->" in text
        rows = tables_by_heading(hook.expand_markers(text))
        keys = {k for table in rows.values() for k in table}
        assert {f"{group}.{k}" for k in schema.GROUP_TABLES[group][name]} <= keys, name


def test_results_rows_are_the_leaderboard_csv_rows(hook):
    with (ROOT / "leaderboard.csv").open(newline="") as f:
        want = [r for r in csv.DictReader(f) if r["method"] == "kd" and r["metric"] == r["primary_metric"]]
    assert want, "leaderboard.csv has no kd row to check against"
    lines = [line for line in hook.results_table("method", "kd").splitlines() if line.startswith("| lupi")
             or line.startswith("| synthetic")]
    assert len(lines) == len(want)
    for line, r in zip(lines, want):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert cells[0] == r["task"] and cells[5] == f"{float(r['mean']):.3f}" and cells[7] == r["n_runs"]
        assert f"[{r['variant']}](" in cells[1]


def test_site_builds_with_every_link_and_anchor_of_the_generated_pages(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("ruamel.yaml")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    # Only the pages this hook writes or fills are checked; fidelity.md links a file outside docs/ (a known warning)
    ours = [w for w in warnings if re.search(r"'(reference|methods|tasks|guides)/|'leaderboard\.md'", w)]
    assert ours == []
    site = tmp_path / "site"
    for page in ("reference/config", "reference/cli", "leaderboard", "methods/pkdot", "tasks/biovid",
                 "guides/adding-a-method"):
        assert (site / f"{page}.html").exists(), page  # mkdocs.yml: use_directory_urls: false (file:// reading)
    assert "method.tnet.patience" in (site / "methods/pkdot.html").read_text()

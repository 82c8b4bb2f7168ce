"""MkDocs hook: the reference pages, written at build time from the code, so that they cannot drift from it.

- reference/config.md: every key of every config table of harness/schema.py, with its default (the composed
  Hydra config), what values it accepts (the schema entry) and what it does (the comments of the YAML file under
  harness/conf/, read with ruamel.yaml, which keeps comments);
- reference/cli.md: every command of `harness` with its usage and options, walked from harness/cli.py's argparse
  parser;
- leaderboard.md: the repository's leaderboard.md as a page of the site (unless docs/ has its own);
- in any page, a line `<!-- harness:config GROUP NAME -->` becomes that option's table (the method and task cards'
  hyper-parameters), and `<!-- harness:results method NAME -->` / `<!-- harness:results task NAME -->` that
  method's or task's rows of leaderboard.csv, each linking to its leaderboard section.

mkdocs.yml registers it under `hooks:`. tests/test_docs_reference.py calls the generators directly.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # mkdocs runs from the repository root, but the hook may be imported from elsewhere
    sys.path.insert(0, str(ROOT))

CONF = ROOT / "harness" / "conf"
MARKER = re.compile(r"^<!-- harness:(config|results) (\w+) ([\w-]+) -->$", re.M)


# ----------------------------------------------------------------------------------------------------------------
# The YAML files' comments


@dataclass
class Entry:
    """A key of a YAML file: its dotted path, its inline comment (with continuation lines) and the comment block
    just above it (a heading for the keys that follow)."""
    path: str
    col: int
    section: bool
    comment: str = ""
    header: str = ""
    notes: list[str] = field(default_factory=list)  # comment lines inside a section that belong to no key


def _text(line: str) -> str:
    return line.strip().removeprefix("#").strip()


def read_comments(path: Path) -> tuple[str, dict[str, Entry]]:
    """(the file's opening comment, {dotted key: Entry}) of one YAML file, in document order.

    ruamel.yaml keeps each comment after the key it follows: the inline comment, its continuation lines (indented
    past the key) and, after them, any comment block that precedes the NEXT key. This splits them again."""
    from ruamel.yaml import YAML

    data = YAML().load(path.read_text())
    opening = ""
    if data is not None and data.ca.comment and data.ca.comment[1]:
        opening = "\n".join(_text(t.value) for t in data.ca.comment[1])
    entries: dict[str, Entry] = {}
    pending: list[tuple[int, str]] = []  # (column, text) of comment lines waiting for the next key
    sections: list[Entry] = []

    def place_pending(col: int) -> str:
        """The pending lines at this key's column are its header; deeper ones are notes of the open section."""
        header = []
        for indent, text in pending:
            if indent == col or not text:
                header.append(text)
            else:
                owner = next((s for s in reversed(sections) if s.col < indent), None)
                if owner is not None:
                    owner.notes.append(text)
        pending.clear()
        return "\n".join(header).strip("\n")

    def walk(node, prefix: str) -> None:
        for key in node:
            line, col = node.lc.key(key)
            value = node[key]
            is_section = hasattr(value, "items") and not value.fa.flow_style() and len(value) > 0
            header = place_pending(col)  # before leaving the open sections: a note inside one is still its own
            while sections and sections[-1].col >= col:
                sections.pop()
            entry = Entry(f"{prefix}{key}", col, is_section, header=header)
            entries[entry.path] = entry
            token = (node.ca.items.get(key) or [None] * 4)[2]
            if token is not None:
                lines = token.value.split("\n")
                if token.start_mark.line == line:
                    entry.comment = _text(lines.pop(0))
                continuation = True
                for raw in lines:
                    indent = len(raw) - len(raw.lstrip())
                    if continuation and raw.strip() and indent > col:
                        entry.comment += " " + _text(raw)
                        continue
                    continuation = False
                    pending.append((indent, _text(raw) if raw.strip() else ""))
            if is_section:
                sections.append(entry)
                walk(value, entry.path + ".")

    if data is not None:
        walk(data, "")
    return opening, entries


# ----------------------------------------------------------------------------------------------------------------
# Tables


def _escape(text: str) -> str:
    """Markdown that shows as written: <run> is no HTML tag, lr *= factor no emphasis."""
    parts = text.split("`")  # odd parts are code spans: shown as written already
    return "`".join(p if i % 2 else p.replace("&", "&amp;").replace("<", "&lt;").replace("*", "\\*")
                    for i, p in enumerate(parts))


def _cell(text: str) -> str:
    """Table-cell text: pipes escaped, links to docs/*.md made relative links of the site."""
    text = _escape(text).replace("|", "\\|")
    return re.sub(r"docs/([\w/.-]+?\.md)(#[\w-]+)?", lambda m: f"[{m.group(0)}](../{m.group(1)}{m.group(2) or ''})",
                  text)


def _prose(text: str) -> str:
    text = _escape(text)
    return re.sub(r"docs/([\w/.-]+?\.md)(#[\w-]+)?", lambda m: f"[{m.group(0)}](../{m.group(1)}{m.group(2) or ''})",
                  text)


def opening_text(text: str) -> str:
    """A YAML file's opening comment as markdown: its `harness ...` example lines as a code block."""
    prose, code = [], []
    for line in text.splitlines():
        if line.startswith("@package"):
            continue
        (code if line.startswith("harness ") else prose).append(line)
    out = _prose(" ".join(prose))
    if code:
        out += "\n\n```text\n" + "\n".join(code) + "\n```"
    return out


def show_default(value: Any) -> str:
    from harness.schema import show

    if isinstance(value, str) and "${" in value:
        return f"`{value}`"
    return f"`{show(value)}`"


def _lookup(d: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return _ABSENT
        d = d[part]
    return d


_ABSENT = object()


@lru_cache(maxsize=None)
def composed(config_name: str, overrides: tuple[str, ...]) -> dict:
    """A composed config as plain data, interpolations kept (`${seed}`)."""
    from omegaconf import OmegaConf

    from harness.config import Composer

    groups = ("task", "backbone") if config_name == "extract" else ("method", "task", "launcher")
    with Composer() as c:
        cfg = c.compose(list(overrides), config_name=config_name, groups=groups) if config_name == "extract" else \
            _compose_unresolved(list(overrides))
    return cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=False)


def _compose_unresolved(overrides: list[str]) -> dict:
    from hydra import compose
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=False)


def defaults_of(group: str, name: str) -> dict:
    """The `group.*` defaults of an option ("" = the root keys), as a run composes them."""
    if group == "":
        return composed("config", ())
    if group == "extract":
        return composed("extract", ())
    if group == "backbone":
        return composed("extract", (f"backbone={name}",))["backbone"]
    return composed("config", (f"{group}={name}",))[group]


def yaml_file(group: str, name: str) -> Path:
    return {"": CONF / "config.yaml", "extract": CONF / "extract.yaml"}.get(group, CONF / group / f"{name}.yaml")


def comments_of(group: str, name: str) -> tuple[str, dict[str, Entry]]:
    """The option's YAML comments by key relative to the group (a `@package _global_` file's `launcher.` cut)."""
    opening, entries = read_comments(yaml_file(group, name))
    if group == "launcher":
        entries = {p.removeprefix("launcher."): e for p, e in entries.items() if p.startswith("launcher.")}
        if name == "slurm_cpu":  # same keys as slurm: its comments explain them
            entries = {**comments_of("launcher", "slurm")[1], **entries}
    return opening, entries


def table_of(group: str, name: str) -> dict:
    from harness import schema

    if group == "":
        return schema.ROOT
    if group == "extract":
        return schema.EXTRACT_ROOT
    if group == "backbone":
        return schema.BACKBONES[name]
    return schema.GROUP_TABLES[group][name]


def config_table(group: str, name: str, heading_links: bool = True) -> str:
    """Markdown of one option's keys: default, accepted values, what it does; comment headings split the table."""
    from harness import schema

    fields = table_of(group, name)
    defaults = defaults_of(group, name)
    opening, entries = comments_of(group, name)
    prefix = f"{group}." if group not in ("", "extract") else ""
    out: list[str] = []
    rows: list[str] = []

    def flush():
        if rows:
            out.extend(["| Key | Default | Accepts | What it does |", "| --- | --- | --- | --- |", *rows, ""])
            rows.clear()

    documented = set()
    for path, entry in entries.items():
        if path == "defaults" or path.startswith("defaults."):
            continue
        if entry.header:
            flush()
            out += [_prose(" ".join(line.strip("- ") for line in entry.header.splitlines())), ""]  # "# --- model ---"
        if entry.section and path not in fields:
            text = " ".join(filter(None, [entry.comment, *entry.notes]))
            if text:
                flush()
                out += [f"`{prefix}{path}.*`: {_prose(text)}", ""]
            continue
        field_ = fields.get(path)
        value = _lookup(defaults, path)
        rows.append(f"| `{prefix}{path}` | {show_default(value) if value is not _ABSENT else 'absent'} | "
                    f"{_cell(field_.describe()) if field_ else '(no schema entry)'} | {_cell(entry.comment)} |")
        documented.add(path)
    flush()
    rest = [p for p in fields if p not in documented]
    if rest:  # entries no YAML sets (schema.MAY_BE_ABSENT): absent by default
        out += ["Keys absent by default (set them with `+key=value`):", "",
                "| Key | Default | Accepts | What it does |", "| --- | --- | --- | --- |"]
        for p in rest:
            value = _lookup(defaults, p)
            note = _absent_note(group, p)
            out.append(f"| `{prefix}{p}` | {show_default(value) if value is not _ABSENT else 'absent'} | "
                       f"{_cell(fields[p].describe())} | {_cell(note)} |")
        out.append("")
    rules = [] if group in ("extract", "backbone") else schema.RULES.get("" if group == "" else f"{group}/{name}", [])
    if rules:
        out += ["Checked together: " + "; ".join(", ".join(f"`{prefix}{k}`" for k in r.keys) for r in rules), ""]
    return "\n".join(out).rstrip() + "\n"


def _absent_note(group: str, path: str) -> str:
    if path.startswith("teacher.train."):
        return f"the stored teacher's own train.{path.rsplit('.', 1)[1]} (absent: train.{path.rsplit('.', 1)[1]} applies)"
    if path.startswith("training."):
        return f"DMD's own train.{path.rsplit('.', 1)[1]} (absent: the run's train.{path.rsplit('.', 1)[1]} applies)"
    return ""


def config_reference() -> str:
    from harness import schema
    from harness.config import builtin_options

    parts = ["# Configuration reference", "",
             "Generated from `harness/schema.py` (what each key accepts), the composed defaults and the comments of "
             "the YAML files under `harness/conf/` when the site is built: it cannot disagree with the code. Set any "
             "key on the command line (`harness run method=kd train.lr=0.001`); `harness run --cfg ...` prints a "
             "run's whole config. Every value is checked before anything runs, with one line per problem.", ""]
    opening, _ = comments_of("", "")
    parts += ["## Run keys", "", "`harness/conf/config.yaml`. " + opening_text(opening), "",
              config_table("", "")]
    for group, title in (("method", "Methods"), ("task", "Tasks"), ("launcher", "Launchers")):
        parts += [f"## {title}", ""]
        for name in builtin_options(group):
            if name not in schema.GROUP_TABLES[group]:
                continue
            opening, _ = comments_of(group, name)
            parts += [f"### `{group}={name}`", "", f"`harness/conf/{group}/{name}.yaml`. "
                      + opening_text(opening), "", config_table(group, name)]
    opening, _ = comments_of("extract", "")
    parts += ["## `harness extract`", "", "`harness/conf/extract.yaml`. " + opening_text(opening), "",
              config_table("extract", "")]
    for name in sorted(schema.BACKBONES):
        opening, _ = comments_of("backbone", name)
        parts += [f"### `backbone={name}`", "", opening_text(opening), "", config_table("backbone", name)]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# The command line


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """{name: (its one-line help, its parser)} of every subcommand, in the parser's order."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out[name] = (helps.get(name, ""), sub)
    return out


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{s}`" for s in a.option_strings) if a.option_strings else f"`{a.metavar or a.dest}`"
        if not a.option_strings and a.nargs in ("*", "+"):
            name += " ..."
        default = "" if a.default in (None, False, argparse.SUPPRESS) or not a.option_strings else f"`{a.default}`"
        rows.append(f"| {name} | {default} | {_cell(a.help or '')} |")
    return rows


def cli_reference() -> str:
    from harness.cli import build_parser

    parser = build_parser()
    parts = ["# Command-line reference", "",
             "Generated from the argparse parser of `harness/cli.py` when the site is built. "
             "`harness COMMAND --help` prints the same.", "", "```text", parser.format_usage().strip(), "```", ""]
    parts += ["| Command | What it does |", "| --- | --- |"]
    commands = subcommands(parser)
    parts += [f"| [`{n}`](#harness-{n}) | {_cell(h)} |" for n, (h, _) in commands.items()]
    parts += ["", "Examples (the module's own list):", "", "```text", (parser.epilog or "").strip(), "```", ""]
    for name, (help_, sub) in commands.items():
        parts += [f"## `harness {name}`", "", _prose(help_), "", "```text",
                  sub.format_usage().strip(), "```", ""]
        rows = _option_rows(sub)
        if rows:
            parts += ["| Argument | Default | What it does |", "| --- | --- | --- |", *rows, ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Results from leaderboard.csv, linked to leaderboard.md's sections


def slugify(text: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify, the default of the toc extension)."""
    from markdown.extensions.toc import slugify as toc_slugify

    return toc_slugify(text, "-")


def leaderboard_sections() -> list[str]:
    path = ROOT / "leaderboard.md"
    return [m.group(1).strip() for m in re.finditer(r"^##+ (.+)$", path.read_text(), re.M)] if path.exists() else []


def section_link(task: str, variant: str, data_source: str) -> str:
    """The leaderboard page's anchor of a (task, variant) section: its heading names both (a loose match, so a
    change of the heading's wording elsewhere still finds it), else the page's top."""
    for heading in leaderboard_sections():
        words = heading.replace("—", " ")
        if heading.split(" ")[0] == task and variant in words and data_source in words:
            return f"../leaderboard.md#{slugify(heading)}"
    return "../leaderboard.md"


def results_table(kind: str, name: str) -> str:
    """The rows of leaderboard.csv of a method or a task: the primary metric's mean and CI, Δ vs the student."""
    path = ROOT / "leaderboard.csv"
    if not path.exists():
        return "*No leaderboard.csv in this checkout: `harness leaderboard` writes it from the records.*\n"
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r[kind] == name and r["metric"] == r["primary_metric"]]
    if not rows:
        return (f"*No committed record of this {kind} yet: the [leaderboard](../leaderboard.md) shows every "
                f"section.*\n")

    def num(v: str) -> str:
        return f"{float(v):.3f}" if v not in ("", None) else ""

    out = ["| Task | Variant | Data | " + ("Method" if kind == "task" else "Configuration") +
           " | Metric | Mean | 95% CI | Runs | Δ vs student |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ci = f"[{num(r['ci_low'])}, {num(r['ci_high'])}]" if r["ci_low"] else ""
        delta = num(r["vs_student_delta"]) + (" \\*" if r.get("vs_student_significant") == "True" else "")
        # the leaderboard's row label: "<method>[ · PI zeros] [<overrides>]"; a method's card drops its name
        who = r["label"] if kind == "task" else (r["label"].removeprefix(r["method"]).strip(" ·") or "defaults")
        if r.get("family", "main") != "main":
            who += f" (study {r['family']})"
        if r.get("selected_on_test") == "True":
            who += " (selected on test, optimistic)"
        link = section_link(r["task"], r["variant"], r["data_source"])
        out.append(f"| {r['task']} | [{_cell(r['variant'])}]({link}) | {r['data_source']} | "
                   f"{_cell(who)} | {r['metric']} | {num(r['mean'])} | {ci} | "
                   f"{r['n_runs']} | {delta} |")
    out += ["", "\\* significant after Holm correction within its section's family (the leaderboard explains the "
            "test). Synthetic and mimic numbers test the machinery, never a dataset.", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# MkDocs events


def expand_markers(markdown: str) -> str:
    def replace(m: re.Match) -> str:
        what, kind, name = m.groups()
        if what == "config":
            return config_table(kind, name)
        return results_table(kind, name)
    return MARKER.sub(replace, markdown)


def root_leaderboard() -> str:
    """The repository's leaderboard.md as a page at the site's root: its links into docs/ (written to work on the
    repository, `docs/statistics.md`) become links within the site (`statistics.md`)."""
    return re.sub(r"\]\(docs/", "](", (ROOT / "leaderboard.md").read_text())


def on_files(files, config):
    from mkdocs.structure.files import File

    generated = {"reference/config.md": config_reference, "reference/cli.md": cli_reference}
    if files.get_file_from_path("leaderboard.md") is None and (ROOT / "leaderboard.md").exists():
        generated["leaderboard.md"] = root_leaderboard
    for uri, make in generated.items():
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, content=make()))
    return files


def on_page_markdown(markdown, page, config, files):
    return expand_markers(markdown)

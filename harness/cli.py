"""`harness`: run, sweep, list, leaderboard, report, data.

  harness run method=kd task=synthetic              one run (Hydra-style overrides)
  harness run -m method=student,kd seed=0,1,2       a sweep (cartesian product), resumable
  harness run -m ... hydra/launcher=slurm          the sweep as one SLURM job array; the prompt returns at once
  harness status                                    each sweep's runs: pending / running / done / failed
  harness list                                      registered methods and tasks
  harness leaderboard                               leaderboard.md + leaderboard.csv from results/
  harness leaderboard --latex leaderboard.tex       ... and the same tables as booktabs LaTeX
  harness report --results results --out report/    one static HTML page with figures (report/index.html)
  harness reproduce --list                          the paper recipes (harness/conf/recipe/*.yaml)
  harness reproduce lupi-2016 [--smoke] [launcher=local]   a paper's protocol, resumable; ours beside its numbers
  harness study pkdot_mechanism [--run] [--out FILE]   a pre-registered study's sweeps and tables (harness/conf/study)
  harness data mimic task=biovid out=DIR            write a mimic dataset in the real on-disk format
  harness extract task=biovid backbone=r3d_18 task.data_root=DIR   visual features (+ EXTRACTED.json) from the videos
"""

from __future__ import annotations

# Start-up: this module imports only what building the parser and catching the usage errors need, so that
# `harness --help` and `harness list` start in a fraction of a second. Each command imports what it uses
# (torch, pandas, Hydra... load only for the commands that need them); tests/test_startup.py checks it.
import argparse
import shutil
import sys
from pathlib import Path

from harness.errors import ConfigError, DiskFullError, RecordError, TaskError
from harness.registry import METHODS, TASKS, UnknownNameError
from harness.storage import disk_full_error, is_disk_full

USAGE_EXIT = 2


def _fail(msg: str | list[str]) -> int:
    for line in [msg] if isinstance(msg, str) else msg:
        print(f"harness: error: {line}", file=sys.stderr)
    return USAGE_EXIT


def cmd_run(args) -> int:
    from omegaconf import OmegaConf

    from harness.launch import LaunchError, check_planned, launch, plan_runs, submits_jobs
    from harness.validate import check_runs

    runs = plan_runs(args.overrides, args.multirun)
    if args.cfg:
        print(OmegaConf.to_yaml(runs[0].cfg))
        check_runs([(runs[0].overrides, runs[0].cfg)])  # and says what is wrong with it, if anything
        return 0
    check_planned(runs)  # every value of every run, before the first run starts or the first job is submitted
    if submits_jobs(runs[0].cfg.launcher):  # SLURM / local workers: submit and return to the prompt
        from harness.jobs import submit_jobs  # submitit: only to submit

        try:
            submit_jobs(runs, runs[0].cfg.launcher)
        except LaunchError as e:
            return _fail(str(e))
        return 0
    records = launch(runs, runs[0].cfg.launcher)
    if not args.multirun and len(runs) == 1:
        from harness.records import read_record, run_dir
        rec = records[0] if records else read_record(run_dir(runs[0].cfg))
        if not records:
            print("this run already has a record (overwrite=true recomputes it):")
        print_run(rec, run_dir(runs[0].cfg))
        return 0 if rec["status"] == "ok" else 1
    failed = [r for r in records if r.get("status") != "ok"]
    print(f"sweep: {len(runs)} runs, {len(records)} launched, {len(failed)} failed"
          + ("" if not failed else " (their records carry the error)"))
    return 1 if failed else 0


def print_run(rec: dict, folder: Path) -> None:
    from tabulate import tabulate

    head = (f"{rec['method']} on {rec['task']}" + (f" ({rec.get('task_variant')})" if rec.get("task_variant") else "")
            + f" — {rec.get('data_source', '?')} data — fold {rec['fold']}, seed {rec['seed']}")
    if rec.get("bound") == "upper_bound":
        head += " — UPPER BOUND: uses privileged modalities at test"
    print(head)
    if rec["status"] != "ok":
        print(f"FAILED: {rec.get('error')}")
    else:
        print(tabulate([(k, f"{v:.4f}") for k, v in rec["metrics"].items()], headers=["metric", "value"],
                       tablefmt="simple"))
    print(f"record: {folder / 'record.json'}")


def cmd_list(args) -> int:
    from tabulate import tabulate

    # from the packages' catalogues (harness/registry.py): no method or task module is imported
    rows = [("method", n, d + (f" [{b.replace('_', ' ')}]" if b else "")) for n, d, b in METHODS.listing()]
    rows += [("task", n, d) for n, d, _ in TASKS.listing()]
    print(tabulate(rows, headers=["kind", "name", "description"], tablefmt="simple"))
    return 0


def cmd_leaderboard(args) -> int:
    from harness.leaderboard import ranks_csv_path, write_leaderboard

    text, summary = write_leaderboard(args.results, args.out, args.csv, args.latex, strict=args.strict)
    files = [args.out, args.csv, ranks_csv_path(args.csv), *([args.latex] if args.latex else [])]
    written = ", ".join(map(str, files[:-1])) + f" and {files[-1]}"
    print(text if args.print else f"wrote {written} from {args.results}/ ({len(summary)} summary rows)")
    return 0


def cmd_report(args) -> int:
    import shlex

    from harness.report import ReportError, write_report  # matplotlib: only when a report is asked for

    command = "harness report " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["report"] else None
    try:
        done = write_report(args.results, args.out, command=command)
    except ReportError as e:
        return _fail(str(e))
    print(f"wrote {done.index} ({done.n_sections} sections, {done.n_figures} figures) from {done.n_records} "
          f"records under {args.results}/")
    return 0


def cmd_scaling(args) -> int:
    from tabulate import tabulate

    from harness.scaling import ScalingError, write_scaling  # matplotlib: only when a figure is asked for
    try:
        done = write_scaling(args.results, args.task, args.x, args.out)
    except ScalingError as e:
        return _fail(str(e))
    cols = ["panel", "label", "x", "mean", "ci_low", "ci_high", "runs"] + \
        [c for c in ("delta", "delta_low", "delta_high", "p_t", "pairs") if c in done.table]
    print(tabulate(done.table[cols], headers="keys", showindex=False, floatfmt=".3f", missingval=""))
    print(f"wrote {done.figure} and {done.csv} from {done.n_records} {args.task} records under {args.results}/")
    return 0


def cmd_status(args) -> int:
    from tabulate import tabulate

    from harness.sweeps import count, find_manifest, read_manifests, run_states, scheduler_states

    manifests = read_manifests(args.results)
    if not manifests:
        print(f"no sweeps under {Path(args.results) / '_sweeps'} (sweeps sent with a SLURM or local launcher appear here)")
        return 0
    if args.sweep:
        try:
            detailed = [find_manifest(args.results, args.sweep)]
        except KeyError as e:
            return _fail(str(e.args[0]))
        shown = detailed
    else:
        shown = manifests
        detailed = manifests if args.all else manifests[-1:]
    states = scheduler_states(shown)
    for m in shown:
        runs = run_states(m, states)
        n = count(runs)
        jobs = sorted({r["job_id"].split("_")[0] for r in m["runs"]})
        counts = ", ".join(f"{v} {k}" for k, v in n.items() if v or k != "unknown")
        print(f"sweep {m['sweep_id']}  [{m['launcher']['name']}, job {' '.join(jobs)}, {m['created_at']}]  "
              f"{len(runs)} runs: {counts}")
        if m in detailed:
            rows = []
            # Only the overrides that tell the runs apart (the swept ones); the manifest has them all.
            common = set.intersection(*(set(r["overrides"]) for r in m["runs"])) if m["runs"] else set()
            for r in runs:
                what = f"{r.run['task']}/{r.run['method']}/{Path(r.run['run_dir']).name}"
                detail = r.detail + (f"\n  log: {r.log}" if r.state in ("failed", "unknown") and r.log else "")
                rows.append((what, " ".join(o for o in r.run["overrides"] if o not in common), r.run["job_id"], r.state,
                             detail))
            print(tabulate(rows, headers=["run", "overrides", "job", "state", "detail"], tablefmt="simple"))
            print(f"logs: {m['logs_dir']}\n")
    return 0


def cmd_data(args) -> int:
    from harness.config import Composer
    from harness.validate import check_runs

    if args.action != "mimic":
        return _fail(f"unknown data action '{args.action}' (known: mimic)")
    kv = dict(o.split("=", 1) for o in args.overrides if "=" in o)
    if "task" not in kv or "out" not in kv:
        return _fail("usage: harness data mimic task=NAME out=DIR [task.key=value ...]")
    with Composer() as composer:
        cfg = composer.compose([f"task={kv['task']}"] + [o for o in args.overrides if o.startswith("task.")])
    check_runs([([], cfg)])
    out = Path(kv["out"])
    existed = out.exists()
    try:
        root = TASKS.get(cfg.task.name).write_mimic(out, cfg.task)
    except Exception as e:
        if not is_disk_full(e):
            raise
        # at least what it had written when the disk filled, and more
        written = sum(f.stat().st_blocks * 512 for f in out.rglob("*") if f.is_file()) if out.exists() else 0
        if not existed:  # all of it is ours: nothing partial stays
            shutil.rmtree(out, ignore_errors=True)
        left = "was removed" if not existed else "is incomplete: delete it"
        raise disk_full_error(out, f"writing a mimic {cfg.task.name} dataset", written + 1) \
            .with_context(f"the tree at {out} {left}", advice="free some space and re-send the command") from e
    print(f"wrote a mimic {cfg.task.name} dataset (real on-disk format, not real data) to {root}")
    print(f"run on it with: harness run task={cfg.task.name} task.data_root={root}")
    return 0


def cmd_reproduce(args) -> int:
    from tabulate import tabulate

    from harness.reproduce import list_recipes, reproduce

    # One positional list (argparse would not take overrides after an option such as --smoke otherwise).
    names = [w for w in args.words if "=" not in w]
    args.overrides = [w for w in args.words if "=" in w]
    args.name = names[0] if len(names) == 1 else None
    if len(names) > 1:
        return _fail(f"harness reproduce runs one recipe, got {' '.join(names)}")
    if args.list:
        if args.name or args.overrides or args.smoke:
            return _fail("usage: harness reproduce --list (alone)")
        rows, problems = list_recipes()
        print(tabulate(rows, headers=["recipe", "task", "runs", "smoke runs", "title"], tablefmt="simple"))
        return _fail(problems) if problems else 0
    if not args.name:
        return _fail("usage: harness reproduce NAME [--smoke] [--no-run] [launcher=... results_dir=... ...]; "
                     "harness reproduce --list shows the recipes")
    done = reproduce(args.name, smoke=args.smoke, extra=args.overrides, run=not args.no_run)
    print(done.printed)
    print(f"\nwrote {done.path} ({done.n_ok} of {done.n_planned} runs ok, {done.n_failed} failed, "
          f"{done.n_missing} without a record)")
    return 0 if done.n_ok == done.n_planned or done.submitted else 1


def cmd_study(args) -> int:
    import shlex

    from tabulate import tabulate

    from harness import study as studies

    names = [w for w in args.words if "=" not in w]
    overrides = [w for w in args.words if "=" in w]
    if args.list:
        if names or overrides:
            return _fail("usage: harness study --list (alone)")
        rows, problems = [], []
        for name in studies.study_names():
            try:
                s = studies.load_study(name)
            except ConfigError as e:
                problems += e.lines
                continue
            rows.append((s.name, len(s.arms), ", ".join(t.name for t in s.tasks), s.title))
        print(tabulate(rows, headers=["study", "arms", "tasks", "title"], tablefmt="simple"))
        return _fail(problems) if problems else 0
    if len(names) != 1:
        return _fail("usage: harness study NAME [--run | --print-commands] [--out FILE] [--csv FILE] "
                     "[launcher=... results_dir=... ...]; harness study --list shows the studies")
    study = studies.load_study(names[0])
    if args.print_commands:  # the sweeps, as a user would type them; nothing is composed or run
        for line in studies.command_lines(study, overrides):
            print(shlex.join(["harness", "run", "-m", *line.overrides]))
        return 0
    plan = studies.plan(study, overrides)
    not_run, manifest, pending = [], None, ""
    if args.run:
        not_run, manifest = studies.run(study, plan)
    if manifest is not None:
        pending = (f"Submitted {manifest.get('n_submitted', '?')} runs (sweep {manifest.get('sweep_id')}): follow "
                   f"them with `harness status`; once they end, `harness study {study.ref}` renders the tables "
                   "from their records.")
    command = shlex.join(["harness", "study", study.ref, *overrides, *(["--out", args.out] if args.out else [])])
    done = studies.render(study, plan, not_run, pending, command=command)
    if args.out:
        studies.write_markdown(Path(args.out), done, study)
    else:
        print(done.markdown, end="")
    csv = args.csv or (str(Path(args.out).with_suffix(".csv")) if args.out else None)
    if csv:
        studies.write_csv(Path(csv), done)
    print(f"{'wrote ' + args.out + ' and ' + csv + ': ' if args.out else ''}{done.n_ok} of {done.n_planned} runs ok, "
          f"{done.n_failed} failed, {done.n_missing} without a record", file=sys.stderr if not args.out else sys.stdout)
    incomplete = bool(done.n_failed or done.n_missing or not_run)
    return 1 if args.run and manifest is None and incomplete else 0


def cmd_extract(args) -> int:
    from harness.extract import main as extract_main  # imports Hydra only; torch and torchvision when it runs

    return extract_main(args.overrides, print_cfg=args.cfg)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="pkd-harness: privileged multimodal KD benchmarks",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one config, or a sweep with -m")
    r.add_argument("-m", "--multirun", action="store_true", help="sweep: cartesian product of comma-separated values")
    r.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    r.add_argument("overrides", nargs="*", help="Hydra-style key=value overrides")
    r.set_defaults(fn=cmd_run)
    sub.add_parser("list", help="registered methods and tasks").set_defaults(fn=cmd_list)
    lb = sub.add_parser("leaderboard", help="write leaderboard.md/.csv from the records")
    lb.add_argument("--results", default="results")
    lb.add_argument("--out", default="leaderboard.md")
    lb.add_argument("--csv", default="leaderboard.csv")
    lb.add_argument("--latex", metavar="FILE", help="also write the sections as booktabs LaTeX tables (a document "
                    "pdflatex compiles)")
    lb.add_argument("--print", action="store_true", help="also print the markdown")
    lb.add_argument("--strict", action="store_true",
                    help="error (exit 2) when runs of one task variant read different data files, instead of "
                         "separate sections")
    lb.set_defaults(fn=cmd_leaderboard)
    rp = sub.add_parser("report", help="write a static HTML report (index.html + PNG figures) from the records")
    rp.add_argument("--results", default="results")
    rp.add_argument("--out", default="report", help="output folder, replaced as a whole (default: report)")
    rp.set_defaults(fn=cmd_report)
    sc = sub.add_parser("scaling", help="figure + table: the primary metric against one task key (lupi's "
                        "task.n_train), Δ vs student, from the records")
    sc.add_argument("--results", default="results")
    sc.add_argument("--task", default="lupi")
    sc.add_argument("--x", default="task.n_train", help="the swept config key (default task.n_train)")
    sc.add_argument("--out", default="docs/lupi_sample_size.png", help="PNG; the numbers go to the same name .csv")
    sc.set_defaults(fn=cmd_scaling)
    st = sub.add_parser("status", help="each sweep's runs: pending / running / done / failed, with errors and logs")
    st.add_argument("--results", default="results", help="the results_dir the sweeps wrote to")
    st.add_argument("--sweep", help="one sweep (its id or a unique prefix) in full; default: the latest in full")
    st.add_argument("--all", action="store_true", help="every sweep in full")
    st.set_defaults(fn=cmd_status)
    rp2 = sub.add_parser("reproduce", help="run a paper's recipe (harness/conf/recipe/NAME.yaml) and render ours "
                         "beside its published numbers: `harness reproduce --list`, `harness reproduce NAME [--smoke]`")
    rp2.add_argument("--list", action="store_true", help="list the recipes: name, task, runs, title")
    rp2.add_argument("--smoke", action="store_true", help="the whole recipe on the task's mimic data (or generator) "
                     "at a tiny size, into <results_dir>-smoke: numbers that test the machinery, never the paper's")
    rp2.add_argument("--no-run", action="store_true", help="run nothing: render the table from the records on disk")
    rp2.add_argument("words", nargs="*", metavar="NAME [key=value ...]", help="the recipe (harness reproduce --list), "
                     "then keys that change no result only: launcher=local|slurm|..., launcher.*, results_dir=, "
                     "cache_dir=, task.data_root=, device=, overwrite=true ...")
    rp2.set_defaults(fn=cmd_reproduce)
    sy = sub.add_parser("study", help="a pre-registered study (harness/conf/study/NAME.yaml): its sweeps (--run) and "
                        "its tables from the records (markdown to stdout or --out, CSV)")
    sy.add_argument("--list", action="store_true", help="list the studies")
    sy.add_argument("--run", action="store_true", help="launch every run without an ok record first (resumable; "
                    "launcher=local|slurm submits them), then render what has finished")
    sy.add_argument("--print-commands", action="store_true", help="print the `harness run -m` command lines of the "
                    "study's sweeps (one per task and arm) and exit")
    sy.add_argument("--out", metavar="FILE", help="write the tables into FILE between the study's marker lines (a new "
                    "file gets them; the text around them is kept); default: stdout")
    sy.add_argument("--csv", metavar="FILE", help="the numbers as CSV (default with --out: FILE with .csv)")
    sy.add_argument("words", nargs="*", metavar="NAME [key=value ...]", help="the study (harness study --list), then "
                    "keys that change no result only: launcher=..., results_dir=, cache_dir=, overwrite=true ...")
    sy.set_defaults(fn=cmd_study)
    d = sub.add_parser("data", help="dataset utilities: `harness data mimic task=NAME out=DIR`")
    d.add_argument("action")
    d.add_argument("overrides", nargs="*")
    d.set_defaults(fn=cmd_data)
    ex = sub.add_parser("extract", help="visual feature files (and Aff-Wild2 wavs) from the dataset's videos or face "
                        "crops: `harness extract task=biovid backbone=r3d_18 task.data_root=DIR`")
    ex.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    ex.add_argument("overrides", nargs="*", help="key=value overrides of harness/conf/extract.yaml (task=, backbone=, "
                    "task.*, extract.*, backbone.*)")
    ex.set_defaults(fn=cmd_extract)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # `harness reproduce NAME --smoke launcher=local`: words after an option (argparse leaves them)
        if args.command not in ("reproduce", "study") or any(w.startswith("-") for w in unknown):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.words += unknown
    try:
        return args.fn(args)
    except ConfigError as e:  # bad input: one line per problem, no traceback
        return _fail(e.lines)
    except (UnknownNameError, TaskError, DiskFullError) as e:
        return _fail(str(e))
    except RecordError as e:  # a record any command read (leaderboard, report, scaling, status, a resumed run...)
        return _fail(str(e).splitlines())
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a full disk met by a library's own writer (harness/storage.py routes the harness's)
        if not is_disk_full(e):
            raise
        where = getattr(e, "filename", None)
        folder = Path(where).parent if where else Path.cwd()
        return _fail(str(disk_full_error(folder, f"{type(e).__name__}: {e}", None)))

"""Re-run committed records with the code on PYTHONPATH and compare every number with the record.

    python scripts/rerun_record.py RUN_DIR [RUN_DIR ...] [--threads 1] [--out /tmp/rerun]
    PYTHONPATH=/path/to/other/checkout python scripts/rerun_record.py RUN_DIR ...   # another commit's code

Each record's own overrides are composed again (same method, task, seed and fold) and run in a fresh results
and cache folder under --out, with --threads intra-op threads. Printed per record: whether the run key is the
same, whether the test metrics are equal to the last digit, and for every model trained whether every logged
per-epoch value (train losses, validation metrics, DMD's edges...) is equal. Float results depend on the CPU
and the thread count (records from 2026-12 on store both: `cpu`, `torch_threads`); compare two checkouts on
one machine with the same --threads to show that a code change computes the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def compare_logs(old: dict, new: dict) -> dict[str, str]:
    out = {}
    for name, old_log in (old.get("logs") or {}).items():
        new_log = (new.get("logs") or {}).get(name, [])
        if len(old_log) != len(new_log):
            out[name] = f"epochs differ: {len(old_log)} vs {len(new_log)}"
            continue
        keys = [k for k in old_log[0] if k != "seconds" and k in new_log[0]] if old_log else []
        diff = [(e["epoch"], k) for e, f in zip(old_log, new_log) for k in keys if e[k] != f[k]]
        out[name] = (f"all {len(keys)} logged values of {len(old_log)} epochs equal" if not diff
                     else f"{len(diff)} values differ, first at epoch {diff[0][0]} ({diff[0][1]})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/rerun_record"))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from harness.config import compose_one
    from harness.records import run_key
    from harness.runner import execute

    for folder in args.run_dirs:
        old = json.loads((folder / "record.json").read_text())
        own = [o for o in old.get("overrides", []) if not o.startswith(("method=", "task=", "seed=", "fold="))]
        overrides = [f"method={old['method']}", f"task={old['task']}", *own, f"seed={old['seed']}",
                     f"fold={old['fold']}", f"results_dir={args.out}/results", f"cache_dir={args.out}/cache",
                     "progress=false", "overwrite=true"]
        cfg = compose_one(overrides)
        new = execute(cfg)
        print(json.dumps({"record": str(folder), "code": str(Path(sys.modules["harness"].__file__).parent.parent),
                          "threads": args.threads, "run_key_old": old["run_key"], "run_key_new": run_key(cfg),
                          "status": new["status"], "metrics_equal": new.get("metrics") == old.get("metrics"),
                          "logs": compare_logs(old, new), "training": (new.get("extra") or {}).get("training")},
                         indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

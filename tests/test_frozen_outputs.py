"""teacher.cache_outputs: frozen teachers (and the T-Net) run once per training sample per run, not on every batch,
and a distillation run's results equal those of running them on every batch, to float32 round-off.

Not bit for bit: the cached table is computed in evaluation batches (train.eval_batch_size rows, in split order), the
per-batch outputs in shuffled training batches, and BLAS picks other kernels (other summation orders) for other
matrix shapes, so the teacher outputs differ in their last bits on some CPUs (an AMD EPYC gave ccc_valence
0.008722531303 vs 0.008722532632). What is compared exactly is what the same arithmetic computes: the table's rows
against the function run on those rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.records import run_dir, run_key
from harness.runner import build_task, execute, resolve_device
from harness.method import RunContext
from harness.teachers import TeacherStore
from harness.training import SplitTensors
from methods.teacher import frozen_outputs

RTOL, ATOL = 1e-5, 1e-7  # see test_cached_frozen_outputs_give_the_same_run_to_round_off


@pytest.mark.parametrize("method,extra", [("kd", []), ("pkdot", []), ("mtpkdot", []),
                                          ("mtpkdot", ["method.selection=sample"]),
                                          ("pkdot", ["task.target=classes"])])
def test_cached_frozen_outputs_give_the_same_run_to_round_off(method, extra, tiny_cfg):
    per_batch_cfg = tiny_cfg(f"method={method}", "teacher.cache_outputs=false", *extra)
    per_batch = execute(per_batch_cfg)
    assert per_batch["status"] == "ok", per_batch.get("traceback")
    predictions = pd.read_csv(run_dir(per_batch_cfg) / "predictions.csv")
    cached_cfg = tiny_cfg(f"method={method}", "teacher.cache_outputs=true", "overwrite=true", *extra)
    assert run_key(cached_cfg) == run_key(per_batch_cfg)  # not part of the key: it changes no result
    cached = execute(cached_cfg)
    assert cached["status"] == "ok", cached.get("traceback")
    assert cached["extra"]["teacher"]["reused"] is True  # the same stored teacher serves both
    # The teacher outputs differ by a few float32 ulps (relative ~1e-7) between the two paths; a few epochs of a tiny
    # model carry that through with little growth (1.5e-7 relative in the metric above). RTOL is 100x that, while a
    # wrong row (another split's table, an index off by one: what this test guards against) changes the teacher's
    # targets by O(1) and the metrics and losses by orders of magnitude more.
    assert cached["metrics"] == pytest.approx(per_batch["metrics"], rel=RTOL, abs=ATOL)
    assert len(cached["logs"]["student"]) >= 2
    for a, b in zip(cached["logs"]["student"], per_batch["logs"]["student"], strict=True):
        a, b = ({k: v for k, v in e.items() if k != "seconds"} for e in (a, b))
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if not isinstance(v, float)} == \
            {k: v for k, v in b.items() if not isinstance(v, float)}  # epochs, selection flags, step counts
        assert {k: v for k, v in a.items() if isinstance(v, float)} == \
            pytest.approx({k: v for k, v in b.items() if isinstance(v, float)}, rel=RTOL, abs=ATOL)
    # ids, targets and predicted classes exactly; predicted values and probabilities to the same tolerance
    pd.testing.assert_frame_equal(pd.read_csv(run_dir(cached_cfg) / "predictions.csv"), predictions,
                                  check_exact=False, rtol=RTOL, atol=ATOL)


def test_frozen_outputs_runs_the_model_once_per_sample_and_reads_rows_by_index(tiny_cfg):
    cfg = tiny_cfg("method=kd", "train.eval_batch_size=25")
    task = build_task(cfg)
    train = task.load_fold(0).train
    ctx = RunContext(cfg=cfg, task=task, fold=0, seed=0, device=resolve_device("cpu"),
                     teachers=TeacherStore(Path(cfg.cache_dir) / "teachers"), run_dir=Path(cfg.results_dir),
                     progress=False)
    calls = []

    def fn(inputs, lengths):  # a function of each row alone, with a second output
        # Elementwise only: a row's value is then the same arithmetic in a batch of 25 as in a batch of 7, so the
        # table's rows must equal fn's bit for bit on any CPU (a matmul or a reduction over the batch's rows would
        # let BLAS pick other kernels for the two batch shapes).
        calls.append(len(next(iter(inputs.values()))))
        first = torch.cat([inputs[m][:, 0] for m in task.spec.modalities], -1)
        return first * 3.0 - 1.0, first.abs()

    frozen = frozen_outputs(fn, train, ctx)
    assert calls == [min(25, len(train) - s) for s in range(0, len(train), 25)]  # once over the split, in order
    data = SplitTensors(train, ctx.device, False)
    for batch in data.batches(7, shuffle=True, generator=torch.Generator().manual_seed(0)):
        got = frozen(batch)
        want = fn(batch.inputs, batch.lengths)
        assert len(got) == 2 and all(torch.equal(g, w) for g, w in zip(got, want))
    assert len(calls) == -(-len(train) // 25) + data.n_batches(7)  # lookups ran nothing; only this test's fn calls

    ctx.cfg.teacher.cache_outputs = False  # off: nothing ahead, fn on every batch
    calls.clear()
    per_batch = frozen_outputs(fn, train, ctx)
    assert calls == []
    batch = next(data.batches(5))
    assert all(torch.equal(g, w) for g, w in zip(per_batch(batch), fn(batch.inputs, batch.lengths)))

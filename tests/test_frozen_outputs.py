"""teacher.cache_outputs: frozen teachers (and the T-Net) run once per training sample per run, not on every batch,
and a distillation run's results are bit for bit those of running them on every batch."""

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


@pytest.mark.parametrize("method,extra", [("kd", []), ("pkdot", []), ("mtpkdot", []),
                                          ("mtpkdot", ["method.selection=sample"]),
                                          ("pkdot", ["task.target=classes"])])
def test_cached_frozen_outputs_give_the_same_run_bit_for_bit(method, extra, tiny_cfg):
    per_batch_cfg = tiny_cfg(f"method={method}", "teacher.cache_outputs=false", *extra)
    per_batch = execute(per_batch_cfg)
    assert per_batch["status"] == "ok", per_batch.get("traceback")
    predictions = pd.read_csv(run_dir(per_batch_cfg) / "predictions.csv")
    cached_cfg = tiny_cfg(f"method={method}", "teacher.cache_outputs=true", "overwrite=true", *extra)
    assert run_key(cached_cfg) == run_key(per_batch_cfg)  # not part of the key: it changes no result
    cached = execute(cached_cfg)
    assert cached["status"] == "ok", cached.get("traceback")
    assert cached["extra"]["teacher"]["reused"] is True  # the same stored teacher serves both
    assert cached["metrics"] == per_batch["metrics"]
    assert len(cached["logs"]["student"]) >= 2
    for a, b in zip(cached["logs"]["student"], per_batch["logs"]["student"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    pd.testing.assert_frame_equal(pd.read_csv(run_dir(cached_cfg) / "predictions.csv"), predictions)


def test_frozen_outputs_runs_the_model_once_per_sample_and_reads_rows_by_index(tiny_cfg):
    cfg = tiny_cfg("method=kd", "train.eval_batch_size=25")
    task = build_task(cfg)
    train = task.load_fold(0).train
    ctx = RunContext(cfg=cfg, task=task, fold=0, seed=0, device=resolve_device("cpu"),
                     teachers=TeacherStore(Path(cfg.cache_dir) / "teachers"), run_dir=Path(cfg.results_dir),
                     progress=False)
    weight = torch.randn(sum(task.spec.modalities.values()), 3)
    calls = []

    def fn(inputs, lengths):  # a deterministic function of each row alone, with a second output
        calls.append(len(next(iter(inputs.values()))))
        pooled = torch.cat([inputs[m].mean(1) for m in task.spec.modalities], -1)
        return pooled @ weight, pooled.sum(-1)

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

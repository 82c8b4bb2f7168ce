"""Shared fixtures: tiny, fast configs of the synthetic task and an isolated results/cache folder."""

from __future__ import annotations

import pytest
import torch

from harness.config import compose_one

torch.set_num_threads(1)  # the CI machine has 2 cores; keep tests from oversubscribing them

# Small enough that a full kd run (teacher + student) takes about a second.
TINY = ["task.n_subjects=10", "task.samples_per_subject=12", "task.seq_len=8", "train.max_epochs=3",
        "train.patience=2", "model.hidden=16", "model.layers=1", "progress=false"]
# Methods with their own network/training keys (not model.* / train.*) get their tiny settings here.
METHOD_TINY = {"dmd": ["method.d=8", "method.heads=2", "method.layers=1", "method.training.max_epochs=2",
                       "method.training.accumulate=2"]}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module, whatever an earlier test of this worker left (RunJob sets the jobs' count):
    tiny tensors gain nothing from intra-op threads, and a module's float comparisons then see one summation order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def record_predict_modalities(monkeypatch):
    """record_predict_modalities(cls) spies on cls.predict for the test: the returned list gets the modalities of
    every split predict is handed."""
    def spy_on(cls) -> list:
        seen = []
        real_predict = cls.predict

        def spy(self, split):
            seen.append(split.modalities)
            return real_predict(self, split)
        monkeypatch.setattr(cls, "predict", spy)
        return seen
    return spy_on


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


@pytest.fixture
def tiny_cfg(tmp_path):
    """compose a tiny run config writing under tmp_path: tiny_cfg('method=kd', 'seed=1')."""
    def make(*overrides: str):
        method = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), None)
        return compose_one([*TINY, f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}",
                            *overrides, *METHOD_TINY.get(method, [])])
    return make

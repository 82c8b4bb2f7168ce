"""Every config value is checked before anything runs (harness/schema.py, harness/validate.py).

The schema and the YAML files cannot drift apart; every default config is valid; a bad value of any group
fails in one line at the prompt with exit status 2 and creates nothing; a sweep reports each problem once,
with the runs that have it; checks that need the data fail the same way before a run's folder exists; a
value the run changes on purpose (pkdot's k capped at the batch size) is in the record and the leaderboard.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import harness.training
from harness.cli import main
from harness.config import compose_one, group_options
from harness.leaderboard import write_leaderboard
from harness.method import RunContext
from harness.records import read_record, run_dir
from harness.schema import GROUP_TABLES, LOOP_CHOICES, MAY_BE_ABSENT, ROOT, TASKS, ConfigError, show
from harness.validate import check_runs, problems
from tests.conftest import TINY

# ---------------------------------------------------------------------------------------------------------------
# The schema and the YAML files in step


def leaf_keys(node: dict, fields: dict, prefix: str = "") -> set[str]:
    """The keys a composed YAML sets: a key with an entry is a leaf (a dict_ too), other mappings are walked."""
    out = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path in fields or not isinstance(value, dict) or not value:
            out.add(path)
        else:
            out |= leaf_keys(value, fields, path + ".")
    return out


def tables():
    """(what, table, keys its YAML sets): the root (seed, fold, model.*, train.*) and every group option."""
    root = OmegaConf.to_container(compose_one([]))
    for group in GROUP_TABLES:
        root.pop(group)
    yield "root", ROOT, leaf_keys(root, ROOT)
    for group, options in GROUP_TABLES.items():
        assert sorted(options) == group_options(group), f"one schema table per conf/{group}/*.yaml"
        for option, fields in options.items():
            node = OmegaConf.to_container(compose_one([f"{group}={option}"]))[group]
            yield f"{group}={option}", {f"{group}.{k}": f for k, f in fields.items()}, leaf_keys(node, fields, "")


@pytest.mark.parametrize("what,fields,keys", list(tables()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_yaml_key_has_an_entry_and_every_entry_is_in_the_yaml(what, fields, keys):
    prefix = "" if what == "root" else what.split("=")[0] + "."
    in_yaml = {prefix + k for k in keys}
    assert sorted(in_yaml - set(fields)) == [], f"{what}: keys of the YAML without a schema entry"
    required = {k for k, f in fields.items() if not f.optional}
    assert sorted(required - in_yaml) == [], f"{what}: schema entries no YAML has (or mark them MAY_BE_ABSENT)"


def test_only_the_listed_keys_may_be_absent():
    optional = {k for _, fields, _ in tables() for k, f in fields.items() if f.optional}
    for key in optional:
        assert any(fnmatch.fnmatch(key, pattern) for pattern in MAY_BE_ABSENT), f"{key} is optional but not listed"
    for pattern in MAY_BE_ABSENT:
        assert any(fnmatch.fnmatch(key, pattern) for key in optional), f"{pattern} matches no entry"
    # DMD's training block takes exactly the train group's keys
    assert {k.split(".", 2)[2] for k in optional if k.startswith("method.training.")} == \
        {k[6:] for k in ROOT if k.startswith("train.")}


def test_choices_are_the_code_s():
    from methods.dmd.method import PRESETS
    from tasks._mmsa import MMSATask
    from tasks.biovid import PROTOCOLS
    from tasks.iemocap import IEMOCAP
    from tasks.synthetic import PRIVILEGED_CHOICES

    assert harness.training.CHOICES is LOOP_CHOICES  # the loop checks the same choices, from one place
    assert GROUP_TABLES["method"]["dmd"]["preset"].choices == ("auto", "none", *PRESETS)
    assert TASKS["mosi"]["primary_metric"].choices == MMSATask.metric_choices
    assert TASKS["iemocap"]["primary_metric"].choices == IEMOCAP.metric_choices
    assert TASKS["biovid"]["protocol"].choices == PROTOCOLS
    assert not TASKS["synthetic"]["privileged"].accepts([]) and TASKS["synthetic"]["privileged"].accepts(
        list(PRIVILEGED_CHOICES))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUP_TABLES for o in group_options(g)])
def test_every_default_config_is_valid(group, option):
    assert problems(compose_one([f"{group}={option}"])) == []


def test_values_are_shown_as_typed_on_the_command_line():
    assert [show(v) for v in ("abc", 3, 0.5, True, None, ["a", 1], {"a": 1.5})] == \
        ["'abc'", "3", "0.5", "true", "null", "['a', 1]", "{a: 1.5}"]
    lr = ROOT["train.lr"]
    assert not lr.accepts(True) and lr.accepts(1) and not lr.accepts(float("nan"))
    assert lr.message("train.lr", float("inf")) == "train.lr=inf: expected a float > 0 (a finite number)"
    assert not ROOT["seed"].accepts(2.0) and not ROOT["train.fused"].accepts(1) and ROOT["train.fused"].accepts(True)


# ---------------------------------------------------------------------------------------------------------------
# Bad values: one line each, exit status 2, nothing created

BAD = [
    # root
    (["seed=-1"], "seed=-1: expected an integer >= 0"),
    (["fold=7"], "fold=7 is out of range for task 'synthetic', which has folds 0..4 (set fold=0..4)"),
    (["device=cuda0"], "device='cuda0': expected auto, cpu, cuda, cuda:<index> or mps; did you mean cuda?"),
    (["overwrite=yes"], "overwrite='yes': expected true or false"),
    (["progress=1"], "progress=1: expected true or false"),
    (["stats.bootstrap_resamples=-5"], "stats.bootstrap_resamples=-5: expected an integer >= 0"),
    (["+extra.note=x"], "unknown config key 'extra' (see `harness run --cfg` for all keys)"),
    # train
    (["train.lr=abc"], "train.lr='abc': expected a float > 0"),
    (["train.lr=0"], "train.lr=0: expected a float > 0"),
    (["train.optimizer=adamx"],
     "train.optimizer='adamx': expected one of adamw, adam, rmsprop, sgd, rmsprop_keras; did you mean adam or adamw?"),
    (["train.fused=1"], "train.fused=1: expected one of auto, true, false"),
    (["train.batch_size=0"], "train.batch_size=0: expected an integer >= 1"),
    (["train.plateau_factor=1.5"], "train.plateau_factor=1.5: expected a float in (0, 1)"),
    (["train.grad_clip=0"], "train.grad_clip=0: expected a float > 0 or null"),
    (["train.max_epochs=2.5"], "train.max_epochs=2.5: expected an integer >= 1"),
    (["train.regression_loss=mae"], "train.regression_loss='mae': expected one of mse, ccc; did you mean mse?"),
    (["train.stop=budget", "train.select_on=loss"],
     ("train.select_on='loss' with train.stop='budget': budget keeps the last epoch and selects nothing; "
      "use train.select_on=primary or train.stop=patience")),
    (["~train.grad_clip"],
     "train.grad_clip is missing: expected a float > 0 or null (a run needs it; `~train.grad_clip` removes it)"),
    (["+train.lrr=1"], "unknown config key 'train.lrr'; did you mean train.lr?"),
    # model
    (["model.kernel=4"], "model.kernel=4: expected an odd integer >= 1"),
    (["model.dropout=1.0"], "model.dropout=1.0: expected a float in [0, 1)"),
    (["model.hidden=-1"], "model.hidden=-1: expected an integer >= 1"),
    # methods
    (["method=student", "+method.temperature=2"],
     "unknown config key 'method.temperature' (see `harness run --cfg` for all keys)"),
    (["method=teacher", "+method.k=5"], "unknown config key 'method.k' (see `harness run --cfg` for all keys)"),
    (["method=kd", "method.temperature=0"], "method.temperature=0: expected a float > 0"),
    (["method=kd", "method.feature_weight=-0.5"], "method.feature_weight=-0.5: expected a float >= 0"),
    (["method=kd", "method.privileged_control=some"],
     "method.privileged_control='some': expected one of none, zeros, shuffle"),
    (["method=pkdot", "method.k=0"], "method.k=0: expected an integer >= 1"),
    (["method=pkdot", "method.anchors=top"], "method.anchors='top': expected one of lowest, highest"),
    (["method=pkdot", "method.scaling=1"], "method.scaling=1: expected a float in (0, 1)"),
    (["method=pkdot", "method.tnet.loss=kl"], "method.tnet.loss='kl': expected one of mmd, mse, both"),
    (["method=pkdot", "method.batch_size=0"], "method.batch_size=0: expected an integer >= 1 or null"),
    (["method=mtpkdot", "method.selection=best"], "method.selection='best': expected one of batch, sample, joint"),
    (["method=mtpkdot", "method.stage1.lr_joint=-1"], "method.stage1.lr_joint=-1: expected a float > 0"),
    (["method=dmd", "method.preset=mosii"],
     "method.preset='mosii': expected one of auto, none, mosi, mosei; did you mean mosi or mosei?"),
    (["method=dmd", "method.attn_dropout_by_modality={audio:1.5}"],
     "method.attn_dropout_by_modality={audio: 1.5, vision: 0.0}: expected a mapping of names to a float in [0, 1)"),
    (["method=dmd", "method.training.optimizer=sgdd"],
     "method.training.optimizer='sgdd': expected one of adamw, adam, rmsprop, sgd, rmsprop_keras; did you mean sgd?"),
    (["method=dmd", "+method.training.momentum=-1"], "method.training.momentum=-1: expected a float >= 0"),
    (["method=dmd", "method.gd.roles=[text,audio]"],
     "method.gd.roles=['text', 'audio']: expected a list of 3 without repeats, each a non-empty string or null"),
    (["method=dmd", "method.training.stop=budget", "method.training.select_on=loss"],
     ("method.training.select_on='loss' with method.training.stop='budget': budget keeps the last epoch and "
      "selects nothing; use method.training.select_on=primary or method.training.stop=patience")),
    # tasks
    (["task.target=class"], "task.target='class': expected one of regression, classes; did you mean classes?"),
    (["task.privileged=[physio,eeg]"],
     "task.privileged=['physio', 'eeg']: expected a list (non-empty) without repeats, each one of physio, audio"),
    (["task.n_classes=3"], "task.n_classes=3: expected one of 5, 2"),
    (["task.n_folds=100"], "task.n_folds=100: expected <= task.n_subjects=40 (folds are groups of subjects)"),
    (["task.val_fraction=1"], "task.val_fraction=1: expected a float in (0, 1)"),
    (["task=biovid", "task.labels=three"], "task.labels='three': expected one of binary, multiclass"),
    (["task=biovid", "task.physio.window_s=[5,2]"],
     "task.physio.window_s=[5, 2]: expected [low, high] with low < high (seconds)"),
    (["task=biovid", "task.protocol=folds_file"],  # the task class's own check, from the config alone
     ("task.protocol=folds_file needs task.folds_dir (the folder with fold_<k>_train.txt / fold_<k>_test.txt in "
      "the MT-PKDOT format)")),
    (["task=biovid", "task.exclude_subjects=reduced66"],
     ("task.exclude_subjects='reduced66': expected reduced67 or a list, each a non-empty string; did you mean "
      "reduced67?")),
    (["task=affwild2", "task.fps=-25"], "task.fps=-25: expected auto or a float > 0"),
    (["task=affwild2", "task.audio.fmin=200", "task.audio.fmax=100"],
     "task.audio.fmax=100: expected > task.audio.fmin=200 or null"),
    (["task=mosi", "task.primary_metric=acc"],
     ("task.primary_metric='acc': expected one of non0_acc2, non0_f1, has0_acc2, has0_f1, acc5, acc7, mae, corr, "
      "mult_acc2, mult_f1, acc3; did you mean acc7 or acc5?")),
    (["task=mosi", "task.student_modalities=[text,audio,vision]"],
     ("task.student_modalities=['text', 'audio', 'vision']: with protocol=privileged choose a non-empty proper "
      "subset of ['text', 'audio', 'vision'] (or protocol=full for all of them)")),
    (["task=mosei", "task.aligned=maybe"], "task.aligned='maybe': expected true or false"),
    (["task=iemocap", "task.primary_metric=f1"],
     ("task.primary_metric='f1': expected one of f1_weighted_mean, accuracy_mean, accuracy_neutral, "
      "f1_weighted_neutral, accuracy_happy, f1_weighted_happy, accuracy_sad, f1_weighted_sad, accuracy_angry, "
      "f1_weighted_angry, acc4, uar4")),
    # launchers
    (["+launcher.partition=gpu"], "unknown config key 'launcher.partition' (see `harness run --cfg` for all keys)"),
    (["launcher=local", "launcher.parallelism=0"], "launcher.parallelism=0: expected an integer >= 1"),
    (["launcher=slurm", "launcher.timeout_min=2"],
     ("launcher.timeout_min=2 is too short for launcher.signal_delay_s=120: the checkpoint signal would come before "
      "the run starts; use launcher.timeout_min >= 4 or lower launcher.signal_delay_s")),
    (["launcher=slurm", "launcher.executor=local"], "launcher.executor='local': expected slurm"),
    (["launcher=slurm_cpu", "launcher.mem_gb=-1"], "launcher.mem_gb=-1: expected a float > 0 or null"),
]


def run_cli(tmp_path: Path, *argv: str) -> tuple[int, list[str], str]:
    """harness run ... writing under tmp_path: (exit status, stderr lines, stdout)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", *argv, f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}"])
    return code, err.getvalue().splitlines(), out.getvalue()


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_value_fails_in_one_line_and_creates_nothing(overrides, message, tmp_path):
    code, err, _ = run_cli(tmp_path, *overrides)
    assert (code, err) == (2, [f"harness: error: {message}"])
    assert list(tmp_path.iterdir()) == []  # no results folder, record, cache or sweep manifest


def test_every_problem_of_a_run_comes_out_at_once(tmp_path):
    code, err, _ = run_cli(tmp_path, "train.lr=abc", "model.kernel=4", "task.target=class")
    assert code == 2 and err == [("harness: error: task.target='class': expected one of regression, classes; did you "
                                  "mean classes?"),  # in the order of the config
                                 "harness: error: model.kernel=4: expected an odd integer >= 1",
                                 "harness: error: train.lr='abc': expected a float > 0"]
    assert not (tmp_path / "results").exists()


def test_cfg_prints_the_config_and_says_what_is_wrong_with_it(tmp_path):
    code, err, out = run_cli(tmp_path, "--cfg", "method=pkdot", "method.k=0")
    assert code == 2 and "  k: 0\n" in out and err == ["harness: error: method.k=0: expected an integer >= 1"]


def test_a_sweep_with_one_bad_value_among_50_good_ones_submits_nothing_and_names_it(tmp_path, monkeypatch):
    submitted = []
    monkeypatch.setattr("harness.jobs.submit_jobs", lambda runs, launcher: submitted.append(runs))
    lrs = ",".join(f"{0.001 * (i + 1):g}" for i in range(50))
    code, err, _ = run_cli(tmp_path, "-m", "method=student", f"train.lr={lrs},abc", "hydra/launcher=local")
    assert code == 2 and submitted == []
    assert err == ["harness: error: train.lr='abc': expected a float > 0 (1 of 51 runs: train.lr=abc)",
                   "harness: error: nothing was run or submitted: 1 problem in 1 of 51 runs"]
    assert list(tmp_path.iterdir()) == []
    code, _, _ = run_cli(tmp_path, "-m", "method=student", f"train.lr={lrs}", "hydra/launcher=local")
    assert code == 0 and len(submitted) == 1 and len(submitted[0]) == 50  # the same sweep without it goes out


def test_a_problem_shared_by_many_runs_is_said_once_with_the_runs_that_have_it():
    runs = [(o, compose_one(o)) for o in (["task.n_classes=2", "seed=0"], ["task.n_classes=3", "seed=0"],
                                          ["task.n_classes=2", "seed=1"], ["task.n_classes=3", "seed=1"])]
    with pytest.raises(ConfigError) as e:
        check_runs(runs + [(["task.n_classes=3", "seed=2", "train.lr=x"],
                            compose_one(["task.n_classes=3", "seed=2", "train.lr=x"]))])
    assert e.value.lines == [
        "task.n_classes=3: expected one of 5, 2 (3 of 5 runs: those with task.n_classes=3)",
        "train.lr='x': expected a float > 0 (1 of 5 runs: task.n_classes=3 seed=2 train.lr=x)",
        "nothing was run or submitted: 2 problems in 3 of 5 runs"]
    with pytest.raises(ConfigError) as e:
        check_runs([(["seed=0"], compose_one(["seed=0", "fold=9"])), (["seed=1"], compose_one(["seed=1", "fold=9"]))])
    assert e.value.lines[0].endswith("(set fold=0..4) (both runs)")


# ---------------------------------------------------------------------------------------------------------------
# Checks that need the data: before the run's folder exists, one line, no record


def test_a_fold_the_data_lacks_fails_before_the_run_folder_exists(tmp_path, monkeypatch):
    # As for BioVid's loso or fold files: only the data knows the number of folds, so the runner checks it.
    from tasks.synthetic import Synthetic
    monkeypatch.setattr(Synthetic, "config_n_folds", property(lambda self: None))
    code, err, _ = run_cli(tmp_path, "method=student", "fold=7", *TINY)
    assert (code, err) == (2, [("harness: error: fold=7 is out of range for task 'synthetic', which has folds 0..4 "
                                "(set fold=0..4)")])
    assert not (tmp_path / "results").exists()


def test_a_method_needing_a_modality_the_task_lacks_fails_before_the_run_folder_exists(tmp_path):
    code, err, _ = run_cli(tmp_path, "method=pkdot", "task.protocol=full", *TINY)
    assert (code, err) == (2, [("harness: error: method=pkdot with method.tnet.enabled=true needs a privileged "
                                "modality for its T-Net to hallucinate, and task.protocol=full leaves none "
                                "(visual+physio all at test): set method.tnet.enabled=false or "
                                "task.protocol=privileged")])
    assert not (tmp_path / "results").exists()
    code, err, _ = run_cli(tmp_path, "method=dmd", "method.gd.roles=[text,vision,audio]", *TINY)
    assert (code, err) == (2, [("harness: error: method.gd.roles=['text', 'vision', 'audio'] must list the task's "
                                "modalities ['visual', 'physio'] as [L, V, A] and needs 3 of them: set "
                                "method.gd.roles=null")])
    assert not (tmp_path / "results").exists()


def test_an_inprocess_sweep_runs_the_others_and_reports_the_run_it_could_not_run(tmp_path):
    code, err, _ = run_cli(tmp_path, "-m", "method=student,pkdot", "task.protocol=full", *TINY)
    assert code == 2 and len(err) == 2
    assert err[0].startswith("harness: error: method=pkdot with method.tnet.enabled=true needs a privileged") \
        and err[0].endswith("(method=pkdot)")
    assert err[1] == "harness: error: 1 of 2 runs were not run (no folder or record); 1 ran (1 ok), their " \
                     "records are written"
    assert [p.name for p in (tmp_path / "results" / "synthetic").iterdir()] == ["student"]


# ---------------------------------------------------------------------------------------------------------------
# Values a run changes on purpose: in the record (`adjusted`) and footnoted on the leaderboard


def test_pkdot_k_cap_is_in_the_record_and_the_leaderboard(tmp_path):
    code, _, _ = run_cli(tmp_path, "method=pkdot", "method.k=500", *TINY)
    assert code == 0
    cfg = compose_one(["method=pkdot", "method.k=500", *TINY, f"results_dir={tmp_path / 'results'}",
                       f"cache_dir={tmp_path / 'cache'}"])
    rec = read_record(run_dir(cfg))
    n_train = rec["n_samples"]["train"]
    assert n_train < 128  # the tiny training split is smaller than pkdot's batch: one batch of all of it
    assert rec["adjusted"] == {"method.k": {"asked": 500, "used": n_train - 1,
                                            "why": f"k must be < the batch size ({n_train}, the whole training split)"}}
    text, _ = write_leaderboard(tmp_path / "results", tmp_path / "lb.md", None)
    label = "pkdot"  # the row's short label; its overrides are listed once under the table
    assert "method.k=500" in text.split("## synthetic")[1]
    assert (f"- {label}: method.k 500 → {n_train - 1} (k must be < the batch size ({n_train}, the whole training "
            "split)), 1 run") in text.splitlines()


def test_k_cap_rule_for_full_and_short_batches():
    from methods.pkdot import note_k_cap

    class Ctx:  # what note_k_cap uses of a RunContext
        adjust = RunContext.adjust

        def __init__(self):
            self.adjusted = {}

    def caps(k, n, bs, drop_last=True):
        ctx = Ctx()
        note_k_cap(ctx, OmegaConf.create({"k": k}), n, OmegaConf.create({"batch_size": bs, "drop_last": drop_last}))
        return ctx.adjusted.get("method.k")

    assert caps(30, 1000, 128) is None and caps(127, 1000, 128) is None
    assert caps(128, 1000, 128) == {"asked": 128, "used": 127, "why": "k must be < the batch size (128)"}
    # 1000 = 7 x 128 + 104: without drop_last the last batch has 104 samples
    assert caps(110, 1000, 128, drop_last=False) == {
        "asked": 110, "used": 103, "why": "the last batch of each epoch has 104 samples (drop_last=false)"}
    assert caps(500, 1000, 128, drop_last=False)["used"] == [127, 103]


def test_dmd_preset_changes_are_recorded_as_adjusted():
    from methods.dmd.method import preset_changes, resolve_hparams

    cfg = compose_one(["method=dmd"]).method
    changes = preset_changes(cfg, resolve_hparams(cfg, "mosei", "regression"))
    assert changes["method.d"] == (50, 30) and changes["method.heads"] == (10, 6)
    assert changes["method.training.select_on"] == ("primary", "loss")
    assert preset_changes(cfg, resolve_hparams(cfg, "synthetic", "regression")) == {}
    assert preset_changes(cfg, resolve_hparams(cfg, "synthetic", "classification")) == {
        "method.training.select_on": ("primary", "loss")}


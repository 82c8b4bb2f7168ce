"""MMSA (MOSI/MOSEI) and MulT IEMOCAP metrics against hand-worked numbers and direct scikit-learn calls."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from harness import metrics as M
from harness.registry import TASKS

TOY_P = np.array([0.5, 1.5, 2.5, -0.5, 0.0])  # the worked example of docs/datasets.md#metrics-mmsa
TOY_Y = np.array([0.0, 2.0, 2.0, 0.0, 0.0])


def test_dmd_toy_vector_by_hand():
    # half-to-even: 0.5->0, 1.5->2, 2.5->2, -0.5->-0, so every pair matches
    assert M.acc7(TOY_Y, TOY_P) == 1.0
    assert M.acc5(TOY_Y, TOY_P) == 1.0
    # Non0 keeps indices 1 and 2 (y = 2, 2), both predicted positive
    assert M.non0_acc2(TOY_Y, TOY_P) == 1.0
    assert M.non0_f1(TOY_Y, TOY_P) == 1.0
    # Has0: truth all non-negative; p = -0.5 is the one miss, p = 0.0 counts as non-negative
    assert M.has0_acc2(TOY_Y, TOY_P) == pytest.approx(4 / 5)
    # F1 of class True: precision 4/4, recall 4/5 -> 8/9, weight 5/5 (class False has support 0)
    assert M.has0_f1(TOY_Y, TOY_P) == pytest.approx(8 / 9)
    # MulT's convention: zero labels are negative -> (y>0) = FTTFF, (p>0) = TTTFF
    assert M.mult_acc2(TOY_Y, TOY_P) == pytest.approx(4 / 5)


def test_round_half_to_even_and_clipping_by_hand():
    p = np.array([2.5, -2.5, 0.5, 1.5, -0.5, 3.7, -4.0])
    y = np.array([2.0, -2.0, 0.0, 2.0, 0.0, 3.0, -3.0])
    assert M.acc7(y, p) == 1.0
    # floor(x + 0.5) would round 2.5 -> 3 and 0.5 -> 1 and miss 2 of 7: the convention matters
    assert np.mean(np.floor(np.clip(p, -3, 3) + 0.5) == y) == pytest.approx(5 / 7)
    # 1.6 vs 3: different 7-class bins (2 vs 3), same 5-class bin after clipping to 2
    assert M.acc7([3.0], [1.6]) == 0.0 and M.acc5([3.0], [1.6]) == 1.0
    # 3 classes: 0.4 vs 1.6 -> 0 vs 1 (clip to 1)
    assert M.acc3([1.6, 0.4], [0.4, 0.4]) == 0.5


def test_f1_argument_order_by_hand():
    # (y>0) = TTTTF, (p>0) = TTFFF. Per-class F1: True 2·2/(4+2) = 2/3, False 2·1/(1+3) = 1/2.
    y = np.array([1.0, 2.0, 0.5, 3.0, -1.0])
    p = np.array([1.0, 1.0, -1.0, -2.0, -1.0])
    # truth supports 4/5, 1/5 (MMSA/DMD order) vs prediction supports 2/5, 3/5 (MulT's swapped call)
    assert M.non0_f1(y, p) == pytest.approx(0.8 * 2 / 3 + 0.2 * 0.5)
    assert M.mult_f1(y, p) == pytest.approx(0.4 * 2 / 3 + 0.6 * 0.5)
    assert M.non0_acc2(y, p) == pytest.approx(3 / 5)


def test_non0_without_non_zero_labels_is_nan():
    assert np.isnan(M.non0_acc2([0.0, 0.0], [1.0, -1.0]))
    assert np.isnan(M.non0_f1([0.0, 0.0], [1.0, -1.0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_mmsa_suite_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(-3.4, 3.4, 300) * 3) / 3  # multiples of 1/3, exact zeros, > 3 values
    y[:10] = 0.0
    p = np.round(rng.normal(0, 1.5, 300) * 2) / 2  # halves: ties for the rounding, exact zeros
    keep = y != 0
    assert M.has0_acc2(y, p) == pytest.approx(accuracy_score(y >= 0, p >= 0))
    assert M.has0_f1(y, p) == pytest.approx(f1_score(y >= 0, p >= 0, average="weighted"))
    assert M.non0_acc2(y, p) == pytest.approx(accuracy_score(y[keep] > 0, p[keep] > 0))
    assert M.non0_f1(y, p) == pytest.approx(f1_score(y[keep] > 0, p[keep] > 0, average="weighted"))
    assert M.mult_acc2(y, p) == pytest.approx(accuracy_score(y > 0, p > 0))
    assert M.mult_f1(y, p) == pytest.approx(f1_score(p > 0, y > 0, average="weighted"))
    for bound, fn in ((3, M.acc7), (2, M.acc5), (1, M.acc3)):
        rounded = [np.round(np.clip(v, -bound, bound)) for v in (p, y)]
        assert fn(y, p) == pytest.approx(np.mean(rounded[0] == rounded[1]))
    assert M.REGRESSION_METRICS["mae"](y, p) == pytest.approx(np.mean(np.abs(p - y)))
    assert M.REGRESSION_METRICS["corr"](y, p) == pytest.approx(np.corrcoef(p, y)[0, 1])


def test_mosi_task_scores_a_predictions_table_with_the_configured_primary_first():
    task = TASKS.get("mosi")({"name": "mosi", "source": "real", "data_root": "/nonexistent", "aligned": True,
                              "protocol": "full", "student_modalities": ["audio", "vision"],
                              "primary_metric": "acc7", "clip_labels": True, "mimic_dir": "/nonexistent",
                              "mimic": {"n_train": 12, "n_valid": 12, "n_test": 12, "seed": 0}})
    task._dims = {"text": 768, "audio": 5, "vision": 20}  # task.spec reads dims from the file: skip the file
    scores = task.score(pd.DataFrame({"id": list("abcde"), "y_true_sentiment": TOY_Y, "y_pred_sentiment": TOY_P}))
    assert list(scores) == ["acc7", "non0_acc2", "non0_f1", "has0_acc2", "has0_f1", "acc5", "mae", "corr"]
    assert scores["acc7"] == 1.0 and scores["has0_f1"] == pytest.approx(8 / 9)
    assert scores["mae"] == pytest.approx(np.mean(np.abs(TOY_P - TOY_Y)))
    assert not task.metric_higher_is_better("mae") and task.metric_higher_is_better("non0_acc2")


def test_four_class_accuracy_and_uar_by_hand():
    # truth classes 0, 0, 1, 2, 3 and one row without an emotion (left out); predictions 0, 1, 1, 2, 2
    truth = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    present = np.array([[.9, .1, .1, .1], [.2, .6, .1, .1], [.1, .8, .3, .1], [.1, .1, .7, .2], [.1, .2, .6, .5],
                        [.9, .9, .9, .9]])
    assert M.acc4(truth, present) == pytest.approx(3 / 5)
    # recalls: class 0 1/2, class 1 1/1, class 2 1/1, class 3 0/1
    assert M.uar4(truth, present) == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    t, p = M.four_class_view(truth, present)
    assert M.uar4(truth, present) == pytest.approx(balanced_accuracy_score(t, p))


def test_iemocap_task_scores_per_emotion_like_mult_with_sklearn():
    rng = np.random.default_rng(3)
    n = 50
    emotions = ("neutral", "happy", "sad", "angry")
    cls = rng.integers(0, 4, n)
    truth = np.eye(4, dtype=int)[cls]
    prob1 = rng.uniform(size=(n, 4))
    df = pd.DataFrame({"id": [f"u{i}" for i in range(n)]})
    for k, e in enumerate(emotions):
        df[f"y_true_{e}"] = truth[:, k]
        df[f"y_pred_{e}"] = (prob1[:, k] > 0.5).astype(int)
        df[f"prob_{e}_0"], df[f"prob_{e}_1"] = 1 - prob1[:, k], prob1[:, k]
    task = TASKS.get("iemocap")({"name": "iemocap", "source": "real", "data_root": "/nonexistent", "aligned": True,
                                 "protocol": "privileged", "student_modalities": ["audio", "vision"],
                                 "primary_metric": "f1_weighted_mean", "four_class_metrics": True,
                                 "mimic_dir": "/nonexistent", "mimic": {"n_train": 12, "n_valid": 12, "n_test": 12,
                                                                        "seed": 0}})
    task._dims = {"text": 300, "audio": 74, "vision": 35}
    s = task.score(df)
    assert list(s)[:2] == ["f1_weighted_mean", "accuracy_mean"] and list(s)[-2:] == ["acc4", "uar4"]
    accs, f1s = [], []
    for k, e in enumerate(emotions):
        pred = (prob1[:, k] > 0.5).astype(int)
        accs.append(accuracy_score(truth[:, k], pred))
        f1s.append(f1_score(truth[:, k], pred, average="weighted"))  # truth first (MulT IEMOCAP)
        assert s[f"accuracy_{e}"] == pytest.approx(accs[-1]) and s[f"f1_weighted_{e}"] == pytest.approx(f1s[-1])
    assert s["accuracy_mean"] == pytest.approx(np.mean(accs)) and s["f1_weighted_mean"] == pytest.approx(np.mean(f1s))
    assert s["acc4"] == pytest.approx(accuracy_score(cls, prob1.argmax(1)))
    assert s["uar4"] == pytest.approx(balanced_accuracy_score(cls, prob1.argmax(1)))

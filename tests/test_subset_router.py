"""The subset router (hadskip/evaluation/baselines/subset_router.py): a route over K-subsets fitted to the per-row
best subsets of held-out training rows, the headroom a route chosen from the input alone can reach."""

import numpy as np
import pytest
import torch

from hadskip.evaluation.baselines.subset_router import (LOGP_FLOOR, Ridge, SubsetOutputs, fit_router,
                                                        routed_predictions, subset_outputs)


def _outputs(rng, n):
    """Two subsets: subset 0 is right where feature 0 > 0, subset 1 elsewhere (labels all 1)."""
    x = rng.normal(size=(n, 5))
    right0 = x[:, 0] > 0
    p1 = np.stack([np.where(right0, 0.9, 0.2), np.where(right0, 0.2, 0.9)])  # (S, N) p(label 1)
    logp = np.log(np.stack([1 - p1, p1], axis=-1))  # (S, N, 2)
    return SubsetOutputs(logp.astype(np.float32), x.astype(np.float32), np.ones(n, dtype=np.int64))


def _accuracy(p, labels):
    return float((p == labels).mean())


def test_the_router_learns_which_subset_an_input_needs():
    rng = np.random.default_rng(0)
    train, dev, test = _outputs(rng, 400), _outputs(rng, 200), _outputs(rng, 200)
    router, alpha, dev_value = fit_router(train, dev, _accuracy)
    preds = routed_predictions(test, router.route(test.features))
    assert _accuracy(preds, test.labels) > 0.9 and dev_value > 0.9  # a fixed subset is right on about half
    assert max(_accuracy(test.logp[s].argmax(-1), test.labels) for s in (0, 1)) < 0.7
    # a very strong ridge ignores the input: every row goes to the subset with the best mean target
    flat = Ridge.fit(train.features, train.target(), 1e12).route(test.features)
    assert len(set(flat.tolist())) == 1 and flat[0] == int(train.target().mean(axis=0).argmax())


def test_the_target_is_the_true_labels_log_probability_floored():
    logp = np.log(np.array([[[0.3, 0.7], [1.0 - 1e-9, 1e-9]]], dtype=np.float64)).astype(np.float32)  # (1, 2, 2)
    out = SubsetOutputs(logp, np.zeros((2, 1), np.float32), np.array([1, 1]))
    t = out.target()
    assert t.shape == (2, 1)
    assert t[0, 0] == pytest.approx(np.log(0.7), abs=1e-6) and t[1, 0] == pytest.approx(LOGP_FLOOR)


def test_subset_outputs_are_the_route_of_a_forced_gate_pattern(tmp_path):
    """One embeddings pass per batch, then each subset's layers: the same logits as the model's own route with
    that subset forced on every row."""
    from hadskip.data.batches import encode_split, pad_id
    from hadskip.data.sources import load_task
    from hadskip.evaluation.evaluate import predict
    from hadskip.modeling.checkpoint import load_run
    from hadskip.testing import tiny_teacher

    torch.set_num_threads(1)
    env = tiny_teacher(tmp_path, n_train=16, n_eval=20)
    model, tok, info = load_run(env["teacher"])
    enc = encode_split(load_task(str(env["task"])).dev, tok, info.max_len)
    subsets = [(0,), (2,), (0, 2), (1, 2)]
    out = subset_outputs(model, enc, pad_id(tok), subsets, batch_size=7)
    assert out.features.shape == (len(enc), model.config.hidden_size + 1)
    for s, sub in enumerate(subsets):
        forced = np.zeros((len(enc), model.num_layers), dtype=np.float32)
        forced[:, list(sub)] = 1
        logits, _, _ = predict(model, enc, pad_id(tok), 5, gates="route", forced=forced)
        np.testing.assert_allclose(out.logp[s], torch.log_softmax(torch.from_numpy(logits), -1).numpy(), atol=1e-5)


def test_the_router_trains_only_on_rows_no_run_trained_on(tmp_path):
    from hadskip.data.sources import load_task, train_subset
    from hadskip.testing import tiny_task_dir

    task = str(tiny_task_dir(tmp_path / "task", n_train=50, n_eval=10))
    whole, kept = load_task(task), load_task(task, train_examples=30)
    idx = train_subset(len(whole.train), 30)
    assert [whole.train.texts[i] for i in idx] == kept.train.texts
    rest = np.setdiff1d(np.arange(len(whole.train)), idx)
    assert len(rest) == 20 and not set(whole.train.texts[i] for i in rest) & set(kept.train.texts)
    assert len(train_subset(50, None)) == 50 and len(train_subset(50, 80)) == 50


def test_no_router_is_fitted_on_rows_the_teacher_trained_on(tmp_path):
    """The any-subset backbone starts as a copy of its teacher: training rows the teacher learned from are not
    held out, even when --train-examples left them out of the any-subset run. A teacher fine-tuned on the whole
    split leaves no training row to fit the router on (it is cross-fitted on dev); one fine-tuned on the same
    subset leaves the rest."""
    from hadskip.evaluation.baselines import BaselineConfig
    from hadskip.evaluation.baselines.anysubset import headroom, train_any_subset
    from hadskip.testing import tiny_teacher
    from hadskip.training.config import TrainConfig
    from hadskip.training.finetune import finetune

    torch.set_num_threads(1)
    env = tiny_teacher(tmp_path, n_train=48, n_eval=16)  # its teacher saw all 48 training rows
    base = dict(epochs=0.5, batch_size=16, train_examples=30, progress=False)
    train_any_subset(BaselineConfig(teacher=str(env["teacher"]), out=str(tmp_path / "any-all"), **base))
    h = headroom(tmp_path / "any-all", 1)
    assert "teacher" in h["router_no_held_out"] and h["router_fit"].startswith("dev")
    assert h["router_train_rows"] == 16 and 0 <= h["router_test"] <= 1
    assert h["best_subset_test"] <= h["oracle_test"]  # the rest of the headroom is still there

    part = tmp_path / "ft-part"  # a teacher fine-tuned on the same 30 rows as the students
    finetune(TrainConfig(backbone=str(env["backbone"]), task=str(env["task"]), out=str(part), max_len=32,
                         batch_size=16, epochs=1, lr=1e-3, train_examples=30, progress=False))
    train_any_subset(BaselineConfig(teacher=str(part), out=str(tmp_path / "any-part"), **base))
    h = headroom(tmp_path / "any-part", 1)
    assert h["router_train_rows"] == 48 - 30 and h["router_fit"] == "held-out training rows"


def test_the_dev_fallback_never_scores_a_router_on_rows_it_was_fitted_on():
    """Cross-fitting: with features that are pure noise, a router fitted on a row and scored on it looks good
    (it memorises), one scored on other folds does not. The fallback's dev number must be the honest one."""
    from hadskip.evaluation.baselines.subset_router import fit_router_on_dev

    rng = np.random.default_rng(1)
    n, s = 60, 6
    logp = np.log(np.where(rng.random((s, n, 1)) < 0.5, [[[0.1, 0.9]]], [[[0.9, 0.1]]]))
    out = SubsetOutputs(logp.astype(np.float32), rng.normal(size=(n, 80)).astype(np.float32), np.ones(n, np.int64))
    router, alpha, dev_value = fit_router_on_dev(out, _accuracy, alphas=(1e-3,))
    in_sample = _accuracy(routed_predictions(out, router.route(out.features)), out.labels)
    assert in_sample > 0.9 and dev_value < 0.75

"""ClassDRO (the pure DoReMi update), the class-balanced sampler and the per-class excess statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffprune.reweighting import ClassDRO
from diffprune.reweighting.dro import DROStateError
from diffprune.reweighting.excess import ExcessAccumulator, per_class_excess_sums, weighted_class_loss
from diffprune.reweighting.sampling import ClassBalancedBatches


class DoReMiReference:
    """Independent re-implementation of DoReMi's ``update_domain_weights`` (doremiv1) and ``write_weights``,
    written after sangmichaelxie/doremi's trainer: torch, softmax, ``update_counter`` starting at 1."""

    def __init__(self, k: int, eta: float, eps: float, init: np.ndarray | None = None, initial_score: float = 0.0):
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if init is None else torch.tensor(init / init.sum())
        self.train_domain_weights = w
        self.avg_domain_weights = w.clone()
        self.perdomain_scores = torch.full((k,), initial_score, dtype=torch.float64)
        self.update_counter = 1
        self.eta, self.eps = eta, eps

    def update(self, pertoken_scores: torch.Tensor, domain_ids: torch.Tensor) -> None:
        scores = []
        for d in range(len(self.train_domain_weights)):
            mask = domain_ids == d
            if mask.sum() > 0:
                scores.append(torch.clip(pertoken_scores[mask], min=0).mean())
            else:
                scores.append(self.perdomain_scores[d])
        self.perdomain_scores = torch.stack(scores)
        logw = torch.log(self.train_domain_weights) + self.eta * self.perdomain_scores
        new = torch.nn.functional.softmax(logw, dim=0)
        w = (1 - self.eps) * new + self.eps / len(new)
        self.update_counter += 1
        self.train_domain_weights = w
        self.avg_domain_weights = (self.avg_domain_weights * (self.update_counter - 1) + w) / self.update_counter


def _per_class_clipped_mean(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    present = np.array([(ids == c).any() for c in range(k)])
    excess = np.array([np.clip(scores[ids == c], 0, None).mean() if present[c] else np.nan for c in range(k)])
    return excess, present


@pytest.mark.parametrize("eta,smoothing,k", [(1.0, 1e-3, 5), (0.3, 1e-4, 10), (4.0, 0.05, 3)])
def test_matches_doremi_reference(eta: float, smoothing: float, k: int) -> None:
    rng = np.random.default_rng(0)
    ours = ClassDRO(k, eta=eta, smoothing=smoothing)
    ref = DoReMiReference(k, eta, smoothing)
    for _ in range(60):
        n = int(rng.integers(1, 3 * k))
        ids = rng.integers(0, k, size=n)
        tokens = rng.normal(0.1, 0.5, size=(n, 7))  # per-"token" excess, some negative (to be clipped)
        flat_ids = np.repeat(ids, 7)
        ref.update(torch.tensor(tokens.ravel()), torch.tensor(flat_ids))
        excess, present = _per_class_clipped_mean(tokens.ravel(), flat_ids, k)
        ours.update(excess, present)
        np.testing.assert_allclose(ours.weights, ref.train_domain_weights.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours.average, ref.avg_domain_weights.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours.scores, ref.perdomain_scores.numpy(), rtol=0, atol=1e-12)


def test_matches_doremi_with_init_and_initial_score() -> None:
    rng = np.random.default_rng(1)
    init = np.array([0.5, 0.2, 0.2, 0.1])
    ours = ClassDRO(4, eta=1.0, smoothing=1e-3, init=init, initial_score=np.log(50.0))
    ref = DoReMiReference(4, 1.0, 1e-3, init=init, initial_score=np.log(50.0))
    for _ in range(20):
        ids = rng.integers(0, 2, size=6)  # classes 2 and 3 never appear: their initial score is reused
        tokens = rng.normal(0.0, 1.0, size=6)
        ref.update(torch.tensor(tokens), torch.tensor(ids))
        ours.update(*_per_class_clipped_mean(tokens, ids, 4))
    np.testing.assert_allclose(ours.weights, ref.train_domain_weights.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.average, ref.avg_domain_weights.numpy(), atol=1e-6)


def test_closed_form_without_smoothing() -> None:
    # With constant scores and c = 0, a_n is proportional to a_0 * exp(n * eta * lam).
    lam = np.array([0.0, 0.1, 0.3, 0.05])
    dro = ClassDRO(4, eta=0.7, smoothing=0.0)
    for _ in range(25):
        dro.update(lam, np.ones(4, dtype=bool))
    expected = np.exp(25 * 0.7 * lam)
    np.testing.assert_allclose(dro.weights, expected / expected.sum(), atol=1e-12)


def test_average_includes_initial_weights() -> None:
    rng = np.random.default_rng(2)
    dro = ClassDRO(6, init=rng.random(6) + 0.1)
    for _ in range(15):
        dro.update(rng.random(6), rng.random(6) > 0.3)
    rows = np.vstack([dro.initial[None], dro.history])
    assert dro.history.shape == (15, 6) and dro.score_history.shape == (15, 6)
    np.testing.assert_allclose(dro.average, rows.mean(axis=0), atol=1e-12)
    assert not np.allclose(dro.average, dro.history.mean(axis=0))  # the initial row matters


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e8])
def test_weights_stay_on_simplex_and_above_floor(scale: float) -> None:
    rng = np.random.default_rng(3)
    k, c = 8, 1e-3
    dro = ClassDRO(k, eta=2.0, smoothing=c)
    for _ in range(40):
        dro.update(rng.random(k) * scale, rng.random(k) > 0.2)
        assert np.all(np.isfinite(dro.weights))
        assert abs(dro.weights.sum() - 1.0) < 1e-12
        assert dro.weights.min() >= c / k * (1 - 1e-12)
        assert abs(dro.average.sum() - 1.0) < 1e-12


def test_class_absent_from_every_batch_gives_no_nan() -> None:
    k = 5
    dro = ClassDRO(k, smoothing=1e-3)
    for _ in range(200):
        excess = np.array([0.2, 0.1, 0.4, np.nan, 0.3])
        present = np.array([True, True, True, False, True])
        dro.update(excess, present)
    assert np.all(np.isfinite(dro.weights)) and np.all(np.isfinite(dro.average))
    assert dro.scores[3] == 0.0  # never seen: keeps its initial score
    # pushed down toward the floor (fixed point c/K / (1 - (1-c) e^-0.4) = 6.06e-4 once class 2 dominates)
    assert 1e-3 / k <= dro.weights[3] < 1e-3


def test_absent_class_keeps_previous_score() -> None:
    dro = ClassDRO(3)
    dro.update(np.array([0.5, 0.2, 0.1]), np.ones(3, dtype=bool))
    dro.update(np.array([0.3, np.nan, 0.0]), np.array([True, False, True]))
    np.testing.assert_array_equal(dro.scores, [0.3, 0.2, 0.0])
    np.testing.assert_array_equal(dro.score_history[-1], [0.3, 0.2, 0.0])


def test_state_dict_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(4)
    a = ClassDRO(7, eta=0.5, smoothing=1e-2)
    for _ in range(10):
        a.update(rng.random(7), rng.random(7) > 0.5)
    np.savez(tmp_path / "dro.npz", **a.state_dict())
    with np.load(tmp_path / "dro.npz", allow_pickle=False) as f:
        state = dict(f)
    b = ClassDRO(7)  # other eta/smoothing: restored from the state
    b.load_state_dict(state)
    assert (b.eta, b.smoothing, b.num_updates) == (0.5, 1e-2, 10)
    for _ in range(10):
        ex, pr = rng.random(7), rng.random(7) > 0.5
        a.update(ex, pr)
        b.update(ex, pr)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.average, b.average)
    np.testing.assert_array_equal(a.history, b.history)


def test_state_dict_wrong_class_count() -> None:
    with pytest.raises(DROStateError, match="3 classes"):
        ClassDRO(4).load_state_dict(ClassDRO(3).state_dict())


@pytest.mark.parametrize(
    "kwargs,match",
    [({"num_classes": 0}, "positive integer"), ({"num_classes": 3, "eta": -1}, "eta"),
     ({"num_classes": 3, "smoothing": 1.0}, "smoothing"), ({"num_classes": 3, "init": [1, 0, 1]}, "zero weight"),
     ({"num_classes": 3, "init": [1, 1]}, "3 weights")],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(DROStateError, match=match):
        ClassDRO(**kwargs)


def test_bad_update_inputs() -> None:
    dro = ClassDRO(3)
    with pytest.raises(DROStateError, match="shape"):
        dro.update(np.zeros(2), np.ones(2, dtype=bool))
    with pytest.raises(DROStateError, match="boolean"):
        dro.update(np.zeros(3), np.ones(3))
    with pytest.raises(DROStateError, match="NaN"):
        dro.update(np.array([np.nan, 0, 0]), np.ones(3, dtype=bool))


# --- sampler ---------------------------------------------------------------------------------------------

def test_batches_are_class_balanced_and_deterministic() -> None:
    labels = np.repeat(np.arange(4), [50, 5, 200, 9])  # imbalanced: sampling must still be uniform over classes
    s = ClassBalancedBatches(labels, 4, batch_size=10, seed=3)
    for step in range(30):
        idx = s.indices_at(step)
        counts = np.bincount(labels[idx], minlength=4)
        assert counts.max() - counts.min() <= 1 and counts.sum() == 10
        np.testing.assert_array_equal(labels[idx], s.classes_at(step))
    np.testing.assert_array_equal(s.indices_at(17), ClassBalancedBatches(labels, 4, 10, seed=3).indices_at(17))
    assert not np.array_equal(s.indices_at(17), ClassBalancedBatches(labels, 4, 10, seed=4).indices_at(17))


def test_more_classes_than_batch_cover_every_class() -> None:
    labels = np.repeat(np.arange(10), 3)
    s = ClassBalancedBatches(labels, 12, batch_size=4, seed=0)  # classes 10, 11 are empty
    seen = np.concatenate([labels[s.indices_at(t)] for t in range(5)])  # 20 slots = 2 rounds of 10 classes
    np.testing.assert_array_equal(np.bincount(seen, minlength=12), [2] * 10 + [0, 0])


def test_within_class_sampling_is_uniform() -> None:
    labels = np.array([0] * 4 + [1] * 2)
    s = ClassBalancedBatches(labels, 2, batch_size=2, seed=0)
    idx = np.concatenate([s.indices_at(t) for t in range(4000)])
    freq = np.bincount(idx, minlength=6) / 4000
    np.testing.assert_allclose(freq, [0.25] * 4 + [0.5] * 2, atol=0.03)


# --- excess statistics -----------------------------------------------------------------------------------

def _brute_force_excess(lp: np.ndarray, lr: np.ndarray, y: np.ndarray, k: int, mode: str):
    sums, counts = np.zeros(k), np.zeros(k)
    for i in range(len(y)):
        if mode == "pixel":
            for p, r in zip(lp[i].ravel(), lr[i].ravel()):
                sums[y[i]] += max(p - r, 0.0)
                counts[y[i]] += 1
        else:
            sums[y[i]] += max(lp[i].mean() - lr[i].mean(), 0.0)
            counts[y[i]] += 1
    return sums, counts


@pytest.mark.parametrize("mode", ["pixel", "example"])
def test_per_class_excess_matches_brute_force(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    lp, lr = torch.rand(9, 2, 3, 3, generator=g), torch.rand(9, 2, 3, 3, generator=g)
    y = torch.tensor([0, 2, 2, 0, 1, 2, 0, 0, 2])
    sums, counts = per_class_excess_sums(lp, lr, y, 4, mode=mode)
    bs, bc = _brute_force_excess(lp.numpy().astype(np.float64), lr.numpy().astype(np.float64), y.numpy(), 4, mode)
    np.testing.assert_allclose(sums.numpy(), bs, atol=1e-9)
    np.testing.assert_allclose(counts.numpy(), bc)


def test_timestep_estimator_matches_brute_force() -> None:
    """Each example's clipped mean excess divided by the mean reference loss of its timestep bucket relative
    to the batch's mean reference loss."""
    g = torch.Generator().manual_seed(1)
    lp, lr = torch.rand(12, 1, 2, 2, generator=g), torch.rand(12, 1, 2, 2, generator=g) + 0.1
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1])
    t = torch.tensor([0, 5, 99, 100, 450, 999, 0, 120, 455, 998, 7, 180])  # buckets of 100 steps (T = 1000)
    sums, counts = per_class_excess_sums(lp, lr, y, 3, mode="timestep", timesteps=t, num_timesteps=1000)
    p, r = lp.double().mean((1, 2, 3)).numpy(), lr.double().mean((1, 2, 3)).numpy()
    bucket = t.numpy() // 100
    want, n = np.zeros(3), np.zeros(3)
    for i in range(12):
        norm = r[bucket == bucket[i]].mean() / r.mean()
        want[y[i]] += max(p[i] - r[i], 0.0) / norm
        n[y[i]] += 1
    np.testing.assert_allclose(sums.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(counts.numpy(), n)
    with pytest.raises(ValueError, match="timesteps"):
        per_class_excess_sums(lp, lr, y, 3, mode="timestep")


def test_pixel_and_example_modes_differ_when_signs_mix() -> None:
    lp = torch.tensor([[[[1.0, 0.0]]]])  # excess +1 on one pixel, -1 on the other
    lr = torch.tensor([[[[0.0, 1.0]]]])
    y = torch.tensor([0])
    px, pc = per_class_excess_sums(lp, lr, y, 1, "pixel")
    ex, ec = per_class_excess_sums(lp, lr, y, 1, "example")
    assert (px / pc).item() == pytest.approx(0.5) and (ex / ec).item() == pytest.approx(0.0)


def test_accumulator_over_steps() -> None:
    acc = ExcessAccumulator(3)
    acc.add(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))
    acc.add(torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 6.0, 0.0], dtype=torch.float64))
    excess, present = acc.pop()
    np.testing.assert_allclose(excess[:2], [0.75, 0.5])
    assert np.isnan(excess[2]) and present.tolist() == [True, True, False] and acc.steps == 0


def test_weighted_class_loss_formula() -> None:
    loss = torch.tensor([1.0, 3.0, 5.0, 7.0, 11.0]).reshape(5, 1, 1, 1).expand(5, 1, 2, 2).contiguous()
    y = torch.tensor([0, 0, 1, 2, 2])
    a = torch.tensor([0.5, 0.3, 0.2])
    got = weighted_class_loss(loss, y, a)
    assert got.item() == pytest.approx(0.5 * 2.0 + 0.3 * 5.0 + 0.2 * 9.0)
    # class 2 absent: renormalise over the classes in the batch
    got2 = weighted_class_loss(loss[:3], y[:3], a)
    assert got2.item() == pytest.approx((0.5 * 2.0 + 0.3 * 5.0) / 0.8)
    # uniform weights on a balanced batch give the plain mean
    yb = torch.tensor([0, 1, 2, 0, 1, 2])
    lb = torch.rand(6, 1, 3, 3)
    assert weighted_class_loss(lb, yb, torch.full((3,), 1 / 3)).item() == pytest.approx(lb.mean().item(), rel=1e-6)


def test_weighted_class_loss_gradient_follows_weights() -> None:
    x = torch.ones(4, 1, 1, 1, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    weighted_class_loss(x * 2.0, y, torch.tensor([0.9, 0.1])).backward()
    np.testing.assert_allclose(x.grad.ravel().numpy(), [0.9, 0.9, 0.1, 0.1])

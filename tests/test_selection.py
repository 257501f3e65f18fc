"""Selection scores against independent oracles (scikit-learn, brute force) and the selection contract."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from diffprune.config import ConfigError, validate_config
from diffprune.selection import SelectConfig, Selection, SelectionError, available_methods, score, select
from diffprune.selection import registry


def blobs(n_per_class=(60, 45, 80), d=6, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, n in enumerate(n_per_class):
        a = rng.standard_normal((d, d)) / np.sqrt(d)
        xs.append(rng.standard_normal((n, d)) @ a + 3.0 * k)
        ys.append(np.full(n, k))
    perm = rng.permutation(sum(n_per_class))
    return np.concatenate(xs)[perm].astype(dtype), np.concatenate(ys)[perm]


# ----------------------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("n_per_class,d", [((60, 45, 80), 6), ((12, 20), 40)])  # n > d and n <= d
def test_gaussian_equals_sklearn_gaussian_mixture_per_class(n_per_class, d):
    x, y = blobs(n_per_class, d, dtype=np.float64)
    s = score(x, y, "gaussian")
    for k in np.unique(y):
        xk = x[y == k]
        ref = GaussianMixture(n_components=1, reg_covar=1e-5).fit(xk).score_samples(xk)
        np.testing.assert_allclose(s[y == k], ref, rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("n_per_class,d", [((60, 45, 80), 6), ((15, 25), 30)])
def test_ppca_sklearn_rule_equals_sklearn_pca_score_samples_per_class(n_per_class, d):
    x, y = blobs(n_per_class, d, seed=1, dtype=np.float64)
    s = score(x, y, "ppca", components="sklearn")
    for k in np.unique(y):
        xk = x[y == k]
        ref = PCA(n_components=0.95).fit(xk).score_samples(xk)
        np.testing.assert_allclose(s[y == k], ref, rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("n_per_class,d", [((60, 45, 80), 6), ((15, 25), 30)])
def test_ppca_default_keeps_instance_selection_component_count(n_per_class, d):
    # Instance Selection's PPCA: n_components = number of cumulative explained-variance ratios < 0.95
    x, y = blobs(n_per_class, d, seed=1, dtype=np.float64)
    s = score(x, y, "ppca")
    for k in np.unique(y):
        xk = x[y == k]
        cum = np.cumsum(PCA().fit(xk).explained_variance_ratio_)
        n_upstream = int(np.sum(cum < 0.95))
        assert n_upstream == PCA(n_components=0.95).fit(xk).n_components_ - 1  # one fewer than sklearn
        ref = PCA(n_components=n_upstream).fit(xk).score_samples(xk)
        np.testing.assert_allclose(s[y == k], ref, rtol=1e-9, atol=1e-7)


def test_ppca_component_rules_on_hand_made_ratios():
    from diffprune.selection.methods.ppca import component_count

    cum = np.array([0.5, 0.9, 0.95, 0.99, 1.0])
    assert component_count(cum, 0.95, "upstream") == 2  # 0.5, 0.9 are strictly below
    assert component_count(cum, 0.95, "sklearn") == 4  # searchsorted right of the tie, plus one
    assert component_count(np.array([0.97, 1.0]), 0.95, "upstream") == 1  # never zero components
    with pytest.raises(SelectionError, match="components"):
        score(*blobs(), "ppca", components="bogus")


def test_gaussian_float32_memmap_equals_in_memory(tmp_path):
    x, y = blobs(dtype=np.float32)
    np.save(tmp_path / "f.npy", x)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    np.testing.assert_array_equal(score(mm, y, "gaussian"), score(x, y, "gaussian"))


def test_memmap_block_scans_with_shuffled_labels_equal_in_memory(tmp_path, monkeypatch):
    from diffprune.selection import inputs

    x, y = blobs((50, 40, 30, 20), d=5, seed=9)  # rows of each class are scattered over the file
    np.save(tmp_path / "f.npy", x)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    monkeypatch.setattr(inputs, "BLOCK_BYTES", 60 * 5 * 4)  # about one class per block
    monkeypatch.setattr(inputs, "SCAN_BYTES", 7 * 5 * 4)  # 7 rows per read
    for method in ("gaussian", "knn", "moderate"):
        np.testing.assert_array_equal(score(mm, y, method), score(x, y, method))


def test_knn_equals_brute_force():
    x, y = blobs(seed=2)
    s = score(x, y, "knn", k=5)
    for k in np.unique(y):
        xk = x[y == k].astype(np.float64)
        dist = np.sort(cdist(xk, xk), axis=1)  # column 0 is the row itself
        np.testing.assert_allclose(s[y == k], -dist[:, 5], rtol=1e-4, atol=1e-4)


def test_knn_with_duplicate_rows_counts_the_duplicate_as_a_neighbour():
    x = np.array([[0.0], [0.0], [1.0], [3.0]], dtype=np.float32)
    s = score(x, None, "knn", k=1)
    np.testing.assert_allclose(s, [0.0, 0.0, -1.0, -2.0], atol=1e-6)


def brute_force_kcenter(x, budget, first):
    dist = cdist(x, x)
    picked = [first]
    for _ in range(budget - 1):
        picked.append(int(np.argmax(dist[:, picked].min(axis=1))))
    return picked, dist[:, picked].min(axis=1).max()


def test_kcenter_matches_brute_force_greedy_and_its_covering_radius():
    x, y = blobs((200, 150), d=8, seed=3)
    sel = select(x, y, "kcenter", ratio=0.1, seed=5)
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        xk = x[rows].astype(np.float64)
        order = np.argsort(-sel.scores[rows], kind="stable")[: sel.counts[str(k)]]
        ref_order, ref_radius = brute_force_kcenter(xk, len(order), int(order[0]))
        assert list(order) == ref_order
        kept = np.isin(rows, sel.indices)
        radius = cdist(xk, xk[kept]).min(axis=1).max()
        assert radius == pytest.approx(ref_radius, rel=1e-6)


def test_herding_matches_brute_force_deepcore_formula():
    x, y = blobs((50,), d=5, seed=4)
    sel = select(x, y, "herding", ratio=0.2)
    x64 = x.astype(np.float64)
    mu, total, picked = x64.mean(0), np.zeros(5), []
    for t in range(10):
        dist = np.linalg.norm((t + 1) * mu - (total + x64), axis=1)
        dist[picked] = np.inf
        j = int(np.argmin(dist))
        picked.append(j)
        total += x64[j]
    assert sorted(picked) == sel.indices.tolist()


def test_moderate_keeps_the_band_around_the_median_distance():
    x, y = blobs((101,), d=4, seed=5)
    dist = np.linalg.norm(x.astype(np.float64) - x.astype(np.float64).mean(0), axis=1)
    sel = select(x, y, "moderate", ratio=0.2)
    expected = np.argsort(np.abs(dist - np.median(dist)), kind="stable")[:20]
    assert sel.indices.tolist() == sorted(expected.tolist())


def test_random_is_reproducible_by_seed_and_changes_with_it():
    x, y = blobs()
    a = select(x, y, "random", 0.3, seed=7).indices
    b = select(x, y, "random", 0.3, seed=7).indices
    c = select(x, y, "random", 0.3, seed=8).indices
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_gmm_and_kmeans_balanced_are_reproducible():
    x, y = blobs(seed=6)
    for method, opts in [("gmm", {"components": 2}), ("kmeans-balanced", {"n_clusters": 3})]:
        a, b = select(x, y, method, 0.4, seed=1, **opts), select(x, y, method, 0.4, seed=1, **opts)
        np.testing.assert_array_equal(a.indices, b.indices)


def test_kmeans_balanced_allocations():
    rng = np.random.default_rng(0)
    # one class made of two far-apart clusters of 90 and 10 rows
    x = np.concatenate([rng.standard_normal((90, 2)), rng.standard_normal((10, 2)) + 100]).astype(np.float32)
    y = np.zeros(100, dtype=np.int64)
    prop = select(x, y, "kmeans-balanced", 0.2, n_clusters=2, allocation="proportional")
    bal = select(x, y, "kmeans-balanced", 0.2, n_clusters=2, allocation="balanced")
    assert (prop.indices >= 90).sum() == 2  # 20% of each cluster
    assert (bal.indices >= 90).sum() == 10  # equal shares: 10 and 10


# ------------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("ratio", [0.05, 0.25, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("method", ["gaussian", "random", "kcenter", "knn"])
def test_per_class_counts_are_exactly_rounded_ratio(method, ratio):
    x, y = blobs((60, 45, 80, 10))
    sel = select(x, y, method, ratio)
    for k, n_k in zip(range(4), (60, 45, 80, 10)):
        assert sel.counts[str(k)] == max(1, int(np.floor(ratio * n_k + 0.5)))
        assert sel.sizes[str(k)] == n_k
    assert np.all(np.diff(sel.indices) > 0) and sel.indices.dtype == np.int64
    assert sel.scores.dtype == np.float64 and sel.groups.dtype == np.int64 and np.isfinite(sel.scores).all()


def test_half_counts_round_up():
    x, y = blobs((10, 30))
    assert select(x, y, "random", 0.25).counts == {"0": 3, "1": 8}  # 2.5 -> 3, 7.5 -> 8


@pytest.fixture
def constant_method():
    @registry.register("test-constant", "constant scores (test only)")
    def _const(x, **_):
        return np.zeros(len(x))

    yield "test-constant"
    registry._METHODS.pop("test-constant")


def test_register_refuses_a_silent_overwrite(constant_method):
    from diffprune.selection.methods import BUILTIN_METHODS

    assert sorted(available_methods()) == sorted(m.name for m in BUILTIN_METHODS) + [constant_method]
    for name in ("gaussian", constant_method):  # a built-in and a user method
        with pytest.raises(SelectionError, match=f"{name!r} is already registered.*overwrite=True"):
            registry.register(name, "again")(lambda x, **_: np.ones(len(x)))
    assert registry.get_method("gaussian").fn is BUILTIN_METHODS[0].fn
    registry.register(constant_method, "ones now", overwrite=True)(lambda x, **_: np.ones(len(x)))
    x, y = blobs((6, 6))
    np.testing.assert_array_equal(score(x, y, constant_method), np.ones(12))
    assert available_methods()[constant_method] == "ones now"


def test_ties_are_broken_by_lower_index(constant_method):
    x, y = blobs((20, 20))
    sel = select(x, y, constant_method, 0.25)
    for k in (0, 1):
        assert sel.indices[y[sel.indices] == k].tolist() == np.flatnonzero(y == k)[:5].tolist()
    bottom = select(x, y, constant_method, 0.25, keep="bottom")
    np.testing.assert_array_equal(bottom.indices, sel.indices)


def test_keep_top_bottom_middle_follow_the_scores():
    x, y = blobs((41,), seed=8)
    s = score(x, y, "gaussian")
    order = np.argsort(s, kind="stable")  # ascending
    top = select(x, y, "gaussian", 0.2, keep="top").indices
    bottom = select(x, y, "gaussian", 0.2, keep="bottom").indices
    middle = select(x, y, "gaussian", 0.2, keep="middle").indices
    assert top.tolist() == sorted(order[-8:].tolist())
    assert bottom.tolist() == sorted(order[:8].tolist())
    assert middle.tolist() == sorted(order[16:24].tolist())


def test_global_mode_keeps_rounded_ratio_of_all_rows():
    x, y = blobs((60, 45, 80))
    sel = select(x, y, "gaussian", 0.3, per_class=False)
    assert len(sel) == 56  # floor(0.3 * 185 + 0.5)
    s = sel.scores
    assert s[sel.indices].min() >= np.delete(s, sel.indices).max()
    kc = select(x, y, "kcenter", 0.1, per_class=False)
    assert len(kc) == 19 and sum(kc.counts.values()) == 19


def test_unlabelled_data_is_grouped_by_kmeans_clusters():
    x, y = blobs((60, 45, 80), d=4)
    x[y == 1] += 50
    x[y == 2] -= 50
    sel = select(x, None, "gaussian", 0.5, clusters=3)
    assert sel.group_names == ["cluster0", "cluster1", "cluster2"]
    # clusters recover the well-separated classes (up to renaming)
    for g in range(3):
        assert len(np.unique(y[sel.groups == g])) == 1
    assert sorted(sel.sizes.values()) == [45, 60, 80]
    assert all(sel.counts[f"cluster{g}"] == int(np.floor(0.5 * sel.sizes[f"cluster{g}"] + 0.5)) for g in range(3))
    single = select(x, None, "random", 0.5)
    assert single.group_names == ["all"] and len(single) == 93


def test_save_and_load_round_trip(tmp_path):
    x, y = blobs()
    sel = select(x, y, "gaussian", 0.3, class_names=["a", "b", "c"], reg_covar=1e-4)
    sel.save(tmp_path / "sel")
    assert sorted(p.name for p in (tmp_path / "sel").iterdir()) == ["selection.json", "selection.npz"]
    back = Selection.load(tmp_path / "sel")
    np.testing.assert_array_equal(back.indices, sel.indices)
    np.testing.assert_array_equal(back.scores, sel.scores)
    np.testing.assert_array_equal(back.groups, sel.groups)
    assert back.group_names == ["a", "b", "c"] and back.counts == sel.counts
    assert back.options == {"reg_covar": 1e-4} and back.method == "gaussian" and back.ratio == 0.3


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_rejected(bad):
    x, y = blobs()
    x[7, 2] = bad
    with pytest.raises(SelectionError, match="NaN or inf.*first: \\[7\\]"):
        select(x, y, "gaussian", 0.5)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan"), "half"])
def test_ratio_outside_unit_interval_is_rejected(ratio):
    x, y = blobs()
    with pytest.raises(SelectionError, match="ratio"):
        select(x, y, "random", ratio)


def test_length_mismatch_is_rejected():
    x, y = blobs()
    with pytest.raises(SelectionError, match="one entry per feature row"):
        select(x, y[:-1], "gaussian", 0.5)


def test_class_with_one_sample_is_rejected_with_its_name():
    x, y = blobs((30, 30))
    y = y.copy()
    y[0] = 2
    with pytest.raises(SelectionError, match="at least 2 samples.*'bird' \\(1\\)"):
        select(x, y, "gaussian", 0.5, class_names=["cat", "dog", "bird"])


def test_class_with_fewer_samples_than_dims_is_regularised_and_logged(caplog):
    x, y = blobs((10, 50), d=20)
    with caplog.at_level(logging.WARNING, logger="diffprune.selection"):
        s = score(x, y, "gaussian")
    assert np.isfinite(s).all()
    assert "1 of 2 groups have no more samples than feature dims (20)" in caplog.text
    shrunk = score(x, y, "gaussian", shrinkage=0.5)
    assert np.isfinite(shrunk).all() and not np.allclose(shrunk, s)


def test_unknown_method_option_and_keep_are_rejected():
    x, y = blobs()
    with pytest.raises(SelectionError, match="unknown selection method"):
        select(x, y, "nope", 0.5)
    with pytest.raises(SelectionError, match=r"unknown option\(s\) \['reg'\].*reg_covar"):
        select(x, y, "gaussian", 0.5, reg=1e-3)
    with pytest.raises(SelectionError, match="keep must be one of"):
        select(x, y, "gaussian", 0.5, keep="upper")
    with pytest.raises(SelectionError, match="only keep='top'"):
        select(x, y, "kcenter", 0.5, keep="bottom")
    with pytest.raises(SelectionError, match="2-D"):
        select(x[:, 0], y, "gaussian", 0.5)


def test_select_config_validation_messages():
    cfg = validate_config(SelectConfig, {"method": "knn", "ratio": 0.2, "options": {"k": 3}})
    assert cfg.method == "knn" and cfg.options == {"k": 3}
    with pytest.raises(ConfigError) as e:
        validate_config(SelectConfig, {"method": "nope", "ratio": 1.5, "keep": "upper", "extra": 1})
    msg = str(e.value)
    assert "method: got 'nope'; must be one of" in msg and "ratio: got 1.5; must lie in (0, 1]" in msg
    assert "keep:" in msg and "extra: unknown field" in msg


def test_every_registered_method_selects():
    x, y = blobs((40, 30), d=5)
    assert {"gaussian", "ppca", "knn", "gmm", "kcenter", "herding", "kmeans-balanced", "moderate",
            "random"} <= set(available_methods())
    for method in available_methods():
        sel = select(x, y, method, 0.3, **({"n_clusters": 3} if method == "kmeans-balanced" else {}))
        assert sel.counts == {"0": 12, "1": 9}

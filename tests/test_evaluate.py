"""NC4/NC5 from streamed batches: EvalAccumulator summaries give measure's values (issue 15)."""

import numpy as np
import pytest
import xarray as xr
from dense import golden, split

import ncdask

STREAMED = ["nc4_agree", "agree_per_class", "nc5_ood_dev", "nc1_ood_class"]


def _case(name):
    data, _ = golden(name)
    X, y, W = data["X"], data["Y"].astype(np.int64), data["W"]
    st = ncdask.class_stats(split(X, y, chunks=None), n_classes=W.shape[0]).compute()
    return data, st, W


def _feed(acc, X, y, batch, kind):
    for i in range(0, X.shape[0], batch):
        yb = None if y is None else y[i:i + batch]
        (acc.update_test if kind == "test" else acc.update_ood)(X[i:i + batch], yb)
    return acc


def _assert_same(a, b, names=STREAMED):
    for v in names:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-12, atol=0, err_msg=v)


@pytest.mark.parametrize("case", ["collapsed", "manyclass", "wide"])
@pytest.mark.parametrize("batch", [7, 777])
@pytest.mark.parametrize("ood_labels", [None, False])
def test_streamed_test_and_ood_give_measures_values(case, batch, ood_labels):
    data, st, W = _case(case)
    rng = np.random.default_rng(1)
    b = rng.normal(size=W.shape[0]) * 0.1
    ev = ncdask.EvalAccumulator(st, weights=W, bias=b)
    _feed(ev, data["X_test"], data["Y_test"].astype(np.int64), batch, "test")
    _feed(ev, data["X_ood"], data["Y_ood"].astype(np.int64), batch, "ood")
    got = ncdask.measure(st, weights=W, bias=b, test=ev.test_summary(), ood=ev.ood_summary(),
                         metrics=STREAMED, ood_labels=ood_labels).compute()
    want = ncdask.measure(st, weights=W, bias=b,
                          test=split(data["X_test"], data["Y_test"].astype(np.int64), chunks=None),
                          ood=split(data["X_ood"], data["Y_ood"].astype(np.int64), chunks=None),
                          metrics=STREAMED, ood_labels=ood_labels).compute()
    _assert_same(got, want)
    assert got.attrs["left_out"] == {}


def test_every_metric_from_two_streamed_passes_and_ranks_merge():
    """Pass 1: train batches → statistics; pass 2: test and unlabelled OOD batches,
    split over two ranks and merged; every metric equals measure on the stored splits."""
    data, _, W = _case("wide")
    X, y = data["X"], data["Y"].astype(np.int64)
    acc = ncdask.StatsAccumulator(W.shape[0], X.shape[1])
    _ = [acc.update(X[i:i + 64], y[i:i + 64]) for i in range(0, X.shape[0], 64)]
    st = acc.result()
    ranks = [ncdask.EvalAccumulator(st, weights=W) for _ in range(2)]
    Xt, yt, Xo = data["X_test"], data["Y_test"].astype(np.int64), data["X_ood"]
    for i in range(0, Xt.shape[0], 50):
        ranks[(i // 50) % 2].update_test(Xt[i:i + 50], yt[i:i + 50])
    for i in range(0, Xo.shape[0], 50):
        ranks[(i // 50) % 2].update_ood(Xo[i:i + 50])
    ev = ranks[0].merge(ranks[1])
    got = ev.measure().compute()
    want = ncdask.measure(st, weights=W, test=split(Xt, yt, chunks=None),
                          ood=split(Xo, chunks=None)).compute()
    assert set(got.data_vars) == set(want.data_vars)
    assert got.attrs["left_out"] == {} == want.attrs["left_out"]
    for v in want.data_vars:
        np.testing.assert_allclose(got[v].values, want[v].values, rtol=1e-12, err_msg=v)


def test_min_count_and_ignore_index_as_measure_has_them():
    data, st, W = _case("manyclass")
    counts = st["counts"].values
    mc = int(np.sort(counts)[3]) + 1  # leaves a few classes out
    Xt, yt = data["X_test"], data["Y_test"].astype(np.int64).copy()
    yt[::9] = -100
    Xo, yo = data["X_ood"], data["Y_ood"].astype(np.int64).copy()
    yo[::5] = -100
    ev = ncdask.EvalAccumulator(st, weights=W, min_count=mc, ignore_index=-100)
    _feed(ev, Xt, yt, 100, "test")
    _feed(ev, Xo, yo, 100, "ood")
    got = ncdask.measure(st, weights=W, min_count=mc, ignore_index=-100, metrics=STREAMED,
                         test=ev.test_summary(), ood=ev.ood_summary()).compute()
    want = ncdask.measure(st, weights=W, min_count=mc, ignore_index=-100, metrics=STREAMED,
                          test=split(Xt, yt, chunks=None),
                          ood=split(Xo, yo, chunks=None)).compute()
    assert got.attrs["filtered_classes"]
    _assert_same(got, want)


def test_a_summary_of_other_inputs_is_refused():
    data, st, W = _case("wide")
    ev = ncdask.EvalAccumulator(st, weights=W)
    _feed(ev, data["X_test"], data["Y_test"].astype(np.int64), 200, "test")
    summ = ev.test_summary()
    with pytest.raises(ValueError, match="other classifier weights"):
        ncdask.measure(st, weights=W * 1.01, test=summ, metrics="nc4_agree").compute()
    with pytest.raises(ValueError, match="other classifier bias"):
        ncdask.measure(st, weights=W, bias=np.ones(W.shape[0]), test=summ,
                       metrics="nc4_agree").compute()
    shifted = st.copy()
    shifted["means"] = st["means"] + 0.5
    with pytest.raises(ValueError, match="other class means"):
        ncdask.measure(shifted, weights=W, test=summ, metrics="nc4_agree").compute()
    mc = int(np.sort(st["counts"].values)[0]) + 1
    with pytest.raises(ValueError, match="same min_count"):
        ncdask.measure(st, weights=W, test=summ, min_count=mc, metrics="nc4_agree")
    other = ncdask.EvalAccumulator(st, weights=W * 2)
    with pytest.raises(ValueError, match="cannot merge"):
        ev.merge(other)
    with pytest.raises(ValueError, match="test summary was given as ood="):
        ncdask.measure(st, ood=summ, metrics="nc5_ood_dev")
    ood = ncdask.EvalAccumulator(st).update_ood(data["X_ood"]).ood_summary()
    with pytest.raises(ValueError, match="ood summary was given as test="):
        ncdask.measure(st, weights=W, test=ood, metrics="nc4_agree")


def test_a_change_a_projection_would_miss_is_refused():
    """Fingerprints are digests of the exact values: W changed orthogonally to a fixed
    vector (which a projection fingerprint kept, counting another classifier's agreement)
    or one mean changed in its last bit."""
    data, st, W = _case("wide")
    ev = _feed(ncdask.EvalAccumulator(st, weights=W), data["X_test"],
               data["Y_test"].astype(np.int64), 200, "test")
    summ = ev.test_summary()
    r = np.random.default_rng(7_261_201).standard_normal(W.shape[1])  # the old probe
    d = np.random.default_rng(5).normal(size=W.shape)
    W2 = W + (d - np.outer(d @ r, r) / (r @ r)) * np.abs(W).max()
    assert np.allclose(W2 @ r, W @ r, rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="other classifier weights"):
        ncdask.measure(st, weights=W2, test=summ, metrics="nc4_agree").compute()
    nudged = st.copy(deep=True)
    nudged["means"].values[0, 0] = np.nextafter(nudged["means"].values[0, 0], np.inf)
    with pytest.raises(ValueError, match="other class means"):
        ncdask.measure(nudged, weights=W, test=summ, metrics="nc4_agree").compute()
    stored = split(data["X_test"], data["Y_test"], chunks=None)
    same = [float(ncdask.measure(st, weights=W, test=t, metrics="nc4_agree").nc4_agree)
            for t in (summ, stored)]
    assert same[0] == same[1]


def test_bad_batches_raise_and_add_nothing():
    data, st, W = _case("collapsed")
    K, D = W.shape
    ev = ncdask.EvalAccumulator(st, weights=W)
    ev.update_test(data["X_test"][:100], data["Y_test"][:100].astype(np.int64))
    before = ev.test_summary()
    with pytest.raises(ValueError, match="outside the statistics"):
        ev.update_test(data["X_test"][:3], np.array([0, 1, K]))
    with pytest.raises(ValueError, match="need labels"):
        ev.update_test(data["X_test"][:3], None)
    with pytest.raises(ValueError, match="NaN"):
        ev.update_test(np.full((2, D), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match="expected"):
        ev.update_test(data["X_test"][:3, :-1], np.array([0, 1, 2]))
    xr.testing.assert_identical(ev.test_summary(), before)
    ev.update_ood(data["X_ood"][:10])
    with pytest.raises(ValueError, match="all have labels or all have none"):
        ev.update_ood(data["X_ood"][:10], np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match="needs the classifier"):
        ncdask.EvalAccumulator(st).update_test(data["X_test"][:3], np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="no OOD sample"):
        ncdask.EvalAccumulator(st).ood_summary()
    with pytest.raises(ValueError, match="width"):
        wide = ncdask.EvalAccumulator(_case("wide")[1]).update_ood(
            np.zeros((3, 32))).ood_summary()
        ncdask.measure(st, ood=wide, metrics="nc5_ood_dev")


def test_torch_batches():
    torch = pytest.importorskip("torch")
    data, st, W = _case("collapsed")
    Xt, yt = data["X_test"], data["Y_test"].astype(np.int64)
    a = ncdask.EvalAccumulator(st, weights=W).update_test(torch.from_numpy(Xt),
                                                          torch.from_numpy(yt))
    b = ncdask.EvalAccumulator(st, weights=W).update_test(Xt, yt)
    xr.testing.assert_identical(a.test_summary(), b.test_summary())

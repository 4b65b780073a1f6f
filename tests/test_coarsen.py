"""``coarsen``: the statistics of grouped classes from the fine ones, equal to a pass over
the relabelled samples."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dense_metrics import class_data, raise_if_dask_computes, split

import ncdask

K, D = 10, 6
# group 3 has only the empty class 4; group 4 has no class; class 7 alone in group 5
GROUPS = np.array([0, 1, 2, 0, 3, 1, 2, 5, 0, 1])


def _data(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, 400)
    y[y == 4] = 3  # class 4 empty
    return class_data(rng, rng.normal(size=(K, D)) * 3, y)


def _stats(X, y, n, **kw):
    with pytest.warns(ncdask.EmptyClassWarning):
        return ncdask.class_stats(split(X, y, n, chunks=kw.pop("chunks")), **kw)


@pytest.mark.parametrize("global_mean", ["unweighted", "weighted"])
@pytest.mark.parametrize("tile", [1, 3, K])
@pytest.mark.parametrize("chunks", [37, 400])
def test_coarsen_equals_the_statistics_of_the_relabelled_samples(global_mean, tile, chunks):
    X, y = _data()
    fine = _stats(X, y, K, chunks=chunks, tile_size=tile, global_mean=global_mean)
    with raise_if_dask_computes(), pytest.warns(ncdask.EmptyClassWarning, match=r"\[3, 4\]"):
        got = ncdask.coarsen(fine, GROUPS)
    assert isinstance(got["means"].data, da.Array) and isinstance(got["within_cov"].data,
                                                                   da.Array)
    want = _stats(X, GROUPS[y], 6, chunks=chunks, global_mean=global_mean)
    assert sorted(got.data_vars) == sorted(want.data_vars)
    for v in want.data_vars:
        np.testing.assert_allclose(got[v].values, want[v].values, rtol=1e-12, atol=1e-12,
                                   err_msg=v)
    assert got.attrs["empty_classes"] == [3, 4] and got.attrs["fine_classes"] == K
    assert got.attrs["global_mean"] == global_mean
    a = ncdask.measure(got, tile_size=tile).compute()
    b = ncdask.measure(want, tile_size=tile).compute()
    xr.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_one_group_per_class_gives_the_statistics_back():
    X, y = _data(1)
    fine = _stats(X, y, K, chunks=50, tile_size=4)
    with pytest.warns(ncdask.EmptyClassWarning):
        same = ncdask.coarsen(fine, np.arange(K))
    for v in fine.data_vars:
        np.testing.assert_allclose(same[v].values, fine[v].values, rtol=1e-12, atol=1e-13)


def test_groups_are_checked():
    X, y = _data(2)
    fine = _stats(X, y, K, chunks=100)
    for bad, what in ((GROUPS[:-1], "10 integers"), (GROUPS.astype(float), "10 integers"),
                      (np.where(GROUPS == 2, -1, GROUPS), ">= 0")):
        with pytest.raises(ValueError, match=what):
            ncdask.coarsen(fine, bad)
    with pytest.raises(ValueError, match="one statistics object at a time"):
        ncdask.coarsen(xr.concat([fine, fine], dim="epoch"), GROUPS)
    fine = _stats(X, y, K, chunks=100, min_count=50)
    with pytest.raises(ValueError, match="min_count"):
        ncdask.coarsen(fine, GROUPS)

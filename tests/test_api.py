"""The top level is the lazy API; the reference-compatible and peer functions live in compat."""

import numpy as np
import pytest
from dense_metrics import dense_stats

import ncdask
import ncdask.compat as compat
from ncdask.metrics.declarations import METRICS


def test_top_level_is_the_lazy_api_and_compat_names_still_import():
    assert not set(ncdask.__all__) & set(compat.__all__)
    assert {"measure", "sweep", "capture", "class_stats", "EmbeddingStore",
            "nci_scores", "neco_scores", "StatsAccumulator"} <= set(ncdask.__all__)
    for name in compat.__all__:
        assert getattr(ncdask, name) is getattr(compat, name), name  # old imports keep working
    from ncdask import covariance_ratio  # noqa: F401 - the reference README's import


def test_every_peer_function_is_a_measure_variable_with_the_same_value():
    rng = np.random.default_rng(3)
    K, D = 5, 7
    M, W, b = rng.normal(size=(K, D)), rng.normal(size=(K, D)), rng.normal(size=K)
    assert set(compat.PEERS.values()) <= set(METRICS)
    y = np.repeat(np.arange(K), 4)
    X = M[y] + 0.1 * rng.normal(size=(y.size, D))
    st = dense_stats(X, y, K)
    res = ncdask.measure(st, weights=W, bias=b).compute()
    Mc = st.means.values - st.global_mean.values
    mu_w = X.mean(0)
    got = {"classifier_etf_error": compat.classifier_etf_error(W),
           "classifier_equinorm": compat.classifier_equinorm(W),
           "classifier_max_angle": compat.classifier_max_angle(W, tile_size=2),
           "self_duality_distance": compat.self_duality_distance(W, Mc),
           "bias_collapse": compat.bias_collapse(W, b, mu_w)}
    for fn, value in got.items():
        np.testing.assert_allclose(value, float(res[compat.PEERS[fn]]), rtol=1e-10, err_msg=fn)


def test_compat_functions_name_a_mis_shaped_input():
    """A careless-user trial: these used to fail deep in dask ("Chunks do not add up")."""
    rng = np.random.default_rng(0)
    M, W = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    with pytest.raises(ValueError, match=r"Sw has shape \(3, 3\), expected \(8, 8\)"):
        compat.covariance_ratio(np.eye(3), M, M.mean(0))
    with pytest.raises(ValueError, match=r"v has shape \(3,\), expected \(5,\)"):
        compat.variability_cdnv(np.ones(3), M)
    with pytest.raises(ValueError, match=r"W has shape \(3, 8\), expected \(5, 8\)"):
        compat.similarities(W[:3], M)
    with pytest.raises(ValueError, match=r"W has shape \(5, 3\), expected \(5, 8\)"):
        compat.distance_norms(W[:, :3], M)
    # one classifier row is broadcast over the classes, as torch does
    one = compat.similarities(W[0], M, cos=True)
    np.testing.assert_allclose(one, compat.similarities(np.tile(W[0], (5, 1)), M, cos=True))


def test_dir_offers_the_public_api_and_subpackages_only():
    import ncdask

    names = dir(ncdask)
    assert "sweep" in names and "store" in names and "measure" in names
    assert not {"Any", "sys", "types", "importlib", "TYPE_CHECKING", "annotations"} & set(names)
    from ncdask.sweeps import sweep  # noqa: F401 - the module import keeps the function
    assert callable(ncdask.sweep) and callable(ncdask.capture)


def test_all_is_every_lazy_name():
    import ncdask

    assert sorted(ncdask.__all__) == sorted(["__version__", *ncdask._WHERE])

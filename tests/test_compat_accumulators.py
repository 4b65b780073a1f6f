"""The reference's accumulators in ``ncdask.compat`` (docs/migration.md).

The measurement section of the reference's ``examples/mnist.py`` (rhubarbwu/neural-collapse),
written anew on a synthetic loader and a tiny model, runs with ``neural_collapse`` replaced by
``ncdask.compat``; every value is checked against the dense NumPy reference and against
the native ncdask calls the migration guide maps it to. The reference is not a test
dependency: its definitions are those of tests/dense.py (in float64 here).
"""

from __future__ import annotations

import numpy as np
import pytest
from dense import dense_stat_arrays
from dense_metrics import dense_metrics

import ncdask
from ncdask.compat import (
    CovarAccumulator,
    DecAccumulator,
    MeanAccumulator,
    VarNormAccumulator,
    clf_ncc_agreement,
    covariance_ratio,
    kernel_stats,
    log_kernel,
    orthogonality_deviation,
    self_duality_error,
    similarities,
    simplex_etf_error,
    variability_cdnv,
)
from ncdask.kernels._xp import array_namespace

K, D, D_IN = 5, 8, 6


# --------------------------------------------------------------------------- the example


def _example_setup(torch):
    """A tiny model and train/test/OOD loaders. Inputs are multiples of 1/8 and the layers
    before ``fc`` have integer weights, so the features are exact in float32 whatever the
    batch: every pass sees the bits the dense reference sees."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    rng = np.random.default_rng(7)
    body = nn.Linear(D_IN, D, bias=False)
    fc = nn.Linear(D, K)
    with torch.no_grad():
        body.weight.copy_(torch.from_numpy(rng.integers(-2, 3, size=(D, D_IN))))
        fc.weight.copy_(torch.from_numpy(rng.normal(size=(K, D))))
        fc.bias.copy_(torch.from_numpy(rng.normal(size=K)))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Sequential(body, nn.ReLU()), fc

        def forward(self, x):
            return self.fc(self.body(x))

    model = Tiny()

    def data(templates, n, noise, labels=None):
        y = np.arange(n) % K if labels is None else labels
        x = templates[y] + noise * rng.normal(size=(n, D_IN))
        return torch.from_numpy(np.round(8 * x) / 8).float(), torch.from_numpy(y)

    templates = rng.normal(size=(K, D_IN)) * 3
    sets = {"train": data(templates, 203, 1.0), "test": data(templates, 131, 1.5),
            "ood": data(rng.normal(size=(K, D_IN)) * 3, 97, 1.0, rng.permutation(97) % K)}
    gen = torch.Generator().manual_seed(0)
    loaders = {k: DataLoader(TensorDataset(*v), batch_size=32, shuffle=True, generator=gen)
               for k, v in sets.items()}
    return model, loaders, sets


def _run_example(torch, model, loaders):
    """The measurement section of the reference's examples/mnist.py, its ``"cuda"`` device
    argument included; only ``neural_collapse``'s imports are ``ncdask.compat``'s."""
    train_loader, test_loader, ood_loader = loaders["train"], loaders["test"], loaders["ood"]
    device = torch.device("cpu")

    class Features:
        pass

    def hook(self, input, output):
        Features.value = input[0].clone()

    model.fc.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()
        weights = model.fc.weight

        mean_accum = MeanAccumulator(K, D, "cuda")
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            model(images)
            mean_accum.accumulate(Features.value, labels)
        means, mG = mean_accum.compute()

        var_norms_accum = VarNormAccumulator(K, D, "cuda", M=means)
        covar_accum = CovarAccumulator(K, D, "cuda", M=means)
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            model(images)
            var_norms_accum.accumulate(Features.value, labels, means)
            covar_accum.accumulate(Features.value, labels, means)
        var_norms, _ = var_norms_accum.compute()
        covar_within = covar_accum.compute()

        dec_accum = DecAccumulator(K, D, "cuda", M=means, W=weights)
        dec_accum.create_index(means)
        for images, labels in test_loader:
            images, labels = images.to(device), labels.to(device)
            model(images)
            if dec_accum.index is None:
                dec_accum.accumulate(Features.value, labels, weights, means)
            else:
                dec_accum.accumulate(Features.value, labels, weights)

        ood_mean_accum = MeanAccumulator(K, D, "cuda")
        for images, labels in ood_loader:
            images, labels = images.to(device), labels.to(device)
            model(images)
            ood_mean_accum.accumulate(Features.value, labels)
        _, mG_ood = ood_mean_accum.compute()

        results = {
            "nc1_pinv": covariance_ratio(covar_within, means, mG),
            "nc1_svd": covariance_ratio(covar_within, means, mG, "svd"),
            "nc1_quot": covariance_ratio(covar_within, means, mG, "quotient"),
            "nc1_cdnv": variability_cdnv(var_norms, means, tile_size=64),
            "nc2_etf_err": simplex_etf_error(means, mG),
            "nc2g_dist": kernel_stats(means, mG, tile_size=64)[1],
            "nc2g_log": kernel_stats(means, mG, kernel=log_kernel, tile_size=64)[1],
            "nc3_dual_err": self_duality_error(weights, means, mG),
            "nc3u_uni_dual": similarities(weights, means, mG).var().item(),
            "nc4_agree": clf_ncc_agreement(dec_accum),
            "nc5_ood_dev": orthogonality_deviation(means, mG_ood),
        }
    stats = {"means": means, "global_mean": mG, "var_norms": var_norms,
             "within_cov": covar_within, "mG_ood": mG_ood}
    return results, stats, dec_accum


#: the example's result keys -> measure's (and dense_metrics') names
KEYS = {"nc2g_dist": "nc2g_dist_var", "nc2g_log": "nc2g_log_var"}


def test_the_reference_example_runs_on_ncdask_compat_with_the_references_numbers():
    torch = pytest.importorskip("torch")
    model, loaders, sets = _example_setup(torch)
    results, stats, dec = _run_example(torch, model, loaders)

    with torch.no_grad():
        feats = {k: model.body(x).double().numpy() for k, (x, _) in sets.items()}
    labels = {k: y.numpy() for k, (_, y) in sets.items()}
    W = model.fc.weight.detach().double().numpy()

    # the accumulators' results: float64 tensors on the input's device, the definitions
    dense = dense_stat_arrays(feats["train"], labels["train"], K)
    for name in ("means", "global_mean", "var_norms", "within_cov"):
        got = stats[name]
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64, name
        assert got.device.type == "cpu"
        np.testing.assert_allclose(got.numpy(), dense[name], rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    ood_means = [feats["ood"][labels["ood"] == k].mean(0) for k in range(K)]
    np.testing.assert_allclose(stats["mG_ood"].numpy(), np.mean(ood_means, 0), rtol=1e-12)
    np.testing.assert_array_equal(dec.ns_samples.numpy(), np.bincount(labels["test"]))

    # every metric: the dense reference (the reference's definitions, bias-free NC4)
    want = dense_metrics(feats["train"], labels["train"], K, W=W, X_test=feats["test"],
                         y_test=labels["test"], X_ood=feats["ood"], y_ood=labels["ood"])
    assert set(results) == {"nc1_pinv", "nc1_svd", "nc1_quot", "nc1_cdnv", "nc2_etf_err",
                            "nc2g_dist", "nc2g_log", "nc3_dual_err", "nc3u_uni_dual",
                            "nc4_agree", "nc5_ood_dev"}
    for key, value in results.items():
        assert type(value) is float, key
        assert value == pytest.approx(want[KEYS.get(key, key)], rel=1e-10), key
    assert 0 < results["nc4_agree"] < 1  # decisions that differ somewhere

    # what docs/migration.md promises: the native loop gives the same numbers
    acc = ncdask.StatsAccumulator(K, D)
    for x, y in loaders["train"]:
        acc.update(model.body(x).detach(), y)
    st = acc.result()
    ev = ncdask.EvalAccumulator(st, weights=model.fc.weight.detach())
    for role in ("test", "ood"):
        for x, y in loaders[role]:
            ev.update(model.body(x).detach(), y, role=role)
    native = ev.measure(metrics=[KEYS.get(k, k) for k in results]).compute()
    for key, value in results.items():
        assert float(native[KEYS.get(key, key)]) == pytest.approx(value, rel=1e-10), key
    for name in ("means", "global_mean", "var_norms", "within_cov"):
        np.testing.assert_allclose(st[name].values, stats[name].numpy(), rtol=1e-12,
                                   atol=1e-12, err_msg=name)


# --------------------------------------------------------------------------- NumPy input


def _data(seed=0, n=157, K=K, D=D):
    rng = np.random.default_rng(seed)
    y = rng.permutation(n) % K
    X = rng.normal(size=(n, D)) + 4 * rng.normal(size=(K, D))[y]
    return X, y


def _run(X, y, M, W, bounds, **kwargs):
    """All four accumulators over the batches ``X[bounds[i]:bounds[i + 1]]``."""
    accs = [MeanAccumulator(K, D, **kwargs), VarNormAccumulator(K, D, M=M, **kwargs),
            CovarAccumulator(K, D, M=M, **kwargs), DecAccumulator(K, D, W=W, **kwargs)]
    accs[3].create_index(M)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        accs[0].accumulate(X[a:b], y[a:b])
        accs[1].accumulate(X[a:b], y[a:b], M)
        accs[2].accumulate(X[a:b], y[a:b], M)
        accs[3].accumulate(X[a:b], y[a:b], W)
    return accs


def test_numpy_input_gives_numpy_and_the_reference_definitions_about_any_M():
    X, y = _data()
    rng = np.random.default_rng(1)
    M = rng.normal(size=(K, D))  # not the data's means: deviations are taken about M
    W = rng.normal(size=(K, D))
    mean, var, cov, dec = _run(X, y, M, W, [0, 40, 41, 100, len(X)])
    n = np.bincount(y, minlength=K)
    dense = dense_stat_arrays(X, y, K)

    means, mG = mean.compute()
    assert type(means) is np.ndarray and means.dtype == np.float64
    np.testing.assert_allclose(means, dense["means"], rtol=1e-12)
    np.testing.assert_allclose(mG, dense["global_mean"], rtol=1e-12)
    _, mG_w = mean.compute(weighted=True)
    np.testing.assert_allclose(mG_w, X.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(mean.ns_samples, n)
    np.testing.assert_allclose(mean.totals, [X[y == k].sum(0) for k in range(K)], rtol=1e-12)
    sel, sel_means = [0, 3], mean.compute([0, 3])[0]
    np.testing.assert_allclose(sel_means, dense["means"][sel], rtol=1e-12)

    dev = X - M[y]
    sq = np.bincount(y, weights=(dev * dev).sum(1), minlength=K)
    v, v_mean = var.compute()
    np.testing.assert_allclose(v, sq / n, rtol=1e-12)
    assert v_mean == pytest.approx((sq / n).mean(), rel=1e-12)
    np.testing.assert_allclose(var.totals, sq, rtol=1e-12)
    np.testing.assert_allclose(cov.compute(), dev.T @ dev / len(X), rtol=1e-12)
    np.testing.assert_allclose(cov.totals, dev.T @ dev, rtol=1e-12)

    # NC4 as the reference decides: argmax w·x (no bias) against the nearest row of M
    lin = (X @ W.T).argmax(1)
    ncc = ((X[:, None] - M[None]) ** 2).sum(-1).argmin(1)
    hits = np.bincount(y, weights=lin == ncc, minlength=K)
    np.testing.assert_array_equal(dec.totals, hits)
    rates, overall = dec.compute()
    np.testing.assert_allclose(rates, hits / n, rtol=1e-15)
    assert float(overall) == pytest.approx((hits / n).mean(), rel=1e-15)
    assert float(dec.compute(weighted=True)[1]) == clf_ncc_agreement(dec) == hits.sum() / n.sum()
    np.testing.assert_array_equal(dec.filter_indices_by_n_samples(n.min() + 1),
                                  np.nonzero(n >= n.min() + 1)[0])


def test_batch_boundaries_do_not_change_results():
    X, y = _data(2, n=64)
    rng = np.random.default_rng(3)
    M, W = rng.normal(size=(K, D)), rng.normal(size=(K, D))
    runs = [_run(X, y, M, W, b) for b in
            ([0, len(X)], list(range(len(X) + 1)), [0, 0, 5, 6, 30, 30, 63, len(X)])]
    first = runs[0]
    for other in runs[1:]:
        for a, b in zip(first[:3], other[:3], strict=True):
            np.testing.assert_array_equal(a.ns_samples, b.ns_samples)
            ra, rb = a.compute(), b.compute()  # (avg, avg_G), or Covar's matrix
            for x, z in zip(*((r,) if isinstance(r, np.ndarray) else r for r in (ra, rb)),
                            strict=True):
                np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-13)
        np.testing.assert_array_equal(first[3].totals, other[3].totals)


@pytest.mark.parametrize("backend", ["strict", "cupy"])
def test_device_arrays_stay_on_the_device(backend):
    from strict_xp import namespace, to_host

    xp = namespace(backend)
    X, y = _data(8)
    rng = np.random.default_rng(9)
    M, W = rng.normal(size=(K, D)), rng.normal(size=(K, D))
    want = _run(X, y, M, W, [0, 50, len(X)])
    got = _run(*(xp.asarray(a) for a in (X, y, M, W)), [0, 50, len(X)])
    for g, w in zip(got, want, strict=True):
        outs = [g.ns_samples, g.totals, g.filter_indices_by_n_samples(30)]
        refs = [w.ns_samples, w.totals, w.filter_indices_by_n_samples(30)]
        if not isinstance(g, CovarAccumulator):
            outs += [*g.compute(), *g.compute([0, 2], weighted=True)]
            refs += [*w.compute(), *w.compute([0, 2], weighted=True)]
        for o, r in zip(outs, refs, strict=True):
            assert array_namespace(o) is xp, type(g).__name__
            np.testing.assert_allclose(to_host(o), r, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(to_host(got[2].compute()), want[2].compute(), rtol=1e-12)


def test_empty_classes_and_no_batches_are_zeros_as_the_reference():
    X, y = _data(4)
    keep = y != 2
    acc = MeanAccumulator(K, D)
    means0, mG0 = acc.compute()
    assert not means0.any() and not mG0.any()
    pair = acc.accumulate(X[keep], y[keep])
    ns, totals = pair  # the reference's (ns_samples, totals)
    assert ns[2] == 0 and not totals[2].any()
    means, mG = acc.compute()
    assert not means[2].any()  # 0 / (0 + eps), averaged into mG as the reference does
    np.testing.assert_allclose(mG, means.mean(0), rtol=1e-15)
    np.testing.assert_array_equal(acc.filter_indices_by_n_samples(1), [0, 1, 3, 4])


def test_torch_results_keep_the_kind_and_honour_dtype_and_ctype():
    torch = pytest.importorskip("torch")
    X, y = _data(5)
    Xt, yt = torch.from_numpy(X).float(), torch.from_numpy(y)
    acc = MeanAccumulator(K, D, "cpu", torch.float32, torch.int32)
    ns, totals = acc.accumulate(Xt, yt)
    assert ns.dtype == torch.int32 and totals.dtype == torch.float32
    means, mG = acc.compute()
    assert means.dtype == mG.dtype == torch.float32
    np.testing.assert_allclose(means.numpy(), dense_stat_arrays(X.astype(np.float32), y, K)[
        "means"], rtol=1e-6)
    assert MeanAccumulator(K, D).accumulate(Xt, yt)[1].dtype == torch.float64


def test_what_ncdask_cannot_honour_is_refused_clearly():
    X, y = _data(6)
    M = np.zeros((K, D))
    var = VarNormAccumulator(K, D, M=M)
    with pytest.raises(ValueError, match="M differs from the M given before"):
        var.accumulate(X, y, M + 1)
    with pytest.raises(ValueError, match=r"M has shape \(5, 7\)"):
        CovarAccumulator(K, D).accumulate(X, y, M[:, :7])
    cov = CovarAccumulator(K, D, M=M)
    cov.accumulate(X, y, M)
    with pytest.raises(ValueError, match="idxs"):
        cov.compute([0, 1])
    with pytest.raises(ValueError, match="needs the class means"):
        DecAccumulator(K, D).accumulate(X, y, M)
    with pytest.raises(TypeError, match="dtype='float16' is not supported"):
        MeanAccumulator(K, D, dtype="float16")
    with pytest.raises(ValueError, match="n_classes must be a positive integer"):
        MeanAccumulator(0, D)

"""The migration guide (docs/migration.md), row by row where it is not obvious.

Issue 11: the reference's calls must give the reference's numbers. The
reference (rhubarbwu/neural-collapse) is PyTorch-only and not a test
dependency, so its formulas are written out here in NumPy (and its
``DecAccumulator.compute`` in torch) from its source.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from dense_metrics import dense_stats, split

from ncdask import compat
from ncdask.metrics import measure
from ncdask.metrics import reference_api as R


def _case(K: int = 10, D: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(K, D))
    M = rng.normal(size=(K, D)) + 0.5 * W
    return W, M, M.mean(0)


def _unbiased_var_of_similarities(W: np.ndarray, M: np.ndarray, mG: np.ndarray) -> float:
    """The reference README's ``similarities(W, M, mG).var().item()``, by hand."""
    s = np.einsum("kd,kd->k", W, M - mG)
    return float(((s - s.mean()) ** 2).sum() / (len(s) - 1))


# --------------------------------------------------------------------------- per-class arrays


def test_similarities_var_is_torchs_unbiased_variance_for_torch_input():
    torch = pytest.importorskip("torch")
    W, M, mG = _case()
    K = len(W)
    want = _unbiased_var_of_similarities(W, M, mG)
    t = torch.from_numpy
    sims = R.similarities(t(W), t(M), t(mG))
    assert isinstance(sims, torch.Tensor)
    assert sims.dtype == torch.float64 and sims.device == t(W).device
    assert sims.var().item() == pytest.approx(want, rel=1e-12)
    # NumPy's population variance is K-1/K of it: a NumPy result would be off
    s = np.einsum("kd,kd->k", W, M - mG)
    assert np.var(s) == pytest.approx(want * (K - 1) / K, rel=1e-12)
    assert abs(np.var(s) - want) > 1e-3 * want
    # float32 tensors (the reference's usual dtype) come back float32
    f32 = R.similarities(t(W).float(), t(M).float(), t(mG).float())
    assert f32.dtype == torch.float32
    assert f32.var().item() == pytest.approx(want, rel=1e-5)


def test_numpy_input_still_gives_numpy():
    W, M, mG = _case()
    for out in (
        R.similarities(W, M, mG),
        R.similarities(W, M, mG, cos=True),
        R.distance_norms(W, M, mG),
        R.mean_norms(M, mG),
    ):
        assert type(out) is np.ndarray and out.dtype == np.float64
    sims = R.similarities(W, M, mG)
    want = _unbiased_var_of_similarities(W, M, mG)
    assert sims.var(ddof=1) == pytest.approx(want, rel=1e-12)
    assert sims.var() != pytest.approx(want, rel=1e-3)


def test_torch_outputs_follow_the_references_dtype_promotion():
    torch = pytest.importorskip("torch")
    W, M, mG = _case(K=6, D=5, seed=1)
    W32, M64, mG64 = torch.from_numpy(W).float(), torch.from_numpy(M), torch.from_numpy(mG)
    # dot product: W * (M - m_G) promotes to float64
    assert R.similarities(W32, M64, mG64).dtype == torch.float64
    # cosine: the reference casts M - m_G to W's dtype
    cos = R.similarities(W32, M64, mG64, cos=True)
    assert cos.dtype == torch.float32
    Mc = M - mG
    norms = np.linalg.norm(W, axis=1) * np.linalg.norm(Mc, axis=1)
    want = (W * Mc).sum(1) / np.maximum(norms, 1e-8)
    np.testing.assert_allclose(cos.numpy(), want, rtol=1e-6)
    # m_G = 0 (the default) takes no part in the promotion
    assert R.mean_norms(M64.float()).dtype == torch.float32
    assert R.distance_norms(W32, M64.float(), 0).dtype == torch.float32
    # integer means give float64 rather than failing
    assert R.mean_norms(torch.arange(6).reshape(3, 2)).dtype == torch.float64


def test_mean_norms_post_funcs_get_tensors_for_torch_input():
    torch = pytest.importorskip("torch")
    W, M, mG = _case(K=5, D=3, seed=2)
    got = R.mean_norms(torch.from_numpy(M), torch.from_numpy(mG), post_funcs=[torch.square])
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), np.linalg.norm(M - mG, axis=1) ** 2, rtol=1e-12)


def test_cosine_similarities_clamp_each_norm_like_torch():
    torch = pytest.importorskip("torch")
    from torch.nn.functional import cosine_similarity

    rng = np.random.default_rng(6)
    K, D = 6, 5
    # norms 1e-5 (product 1e-10 < 1e-8) and 1e-9 (itself below 1e-8)
    W = rng.normal(size=(K, D)) * np.array([1e-5, 1e-5, 1e-9, 1, 1, 1])[:, None]
    M = rng.normal(size=(K, D)) * np.array([1e-5, 3, 1, 1e-9, 1, 1])[:, None]
    want = cosine_similarity(torch.from_numpy(W), torch.from_numpy(M)).numpy()
    got = R.similarities(W, M, cos=True)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert abs(got[0]) > 0.05  # a product clamp would give about 1e-2 of it
    # NC5 uses the same cosine: |cos(mu_k, mu_G^ood)| averaged, uncentred
    g = rng.normal(size=D) * 1e-6
    ref = cosine_similarity(torch.from_numpy(M), torch.from_numpy(g)[None]).abs().mean().item()
    assert R.orthogonality_deviation(M, g) == pytest.approx(ref, rel=1e-12)


def test_structure_error_is_the_references_building_block():
    W, M, mG = _case(K=7, D=9, seed=7)
    Mc = M - mG
    assert R.structure_error(Mc, Mc) == pytest.approx(R.simplex_etf_error(M, mG), rel=1e-12)
    assert R.structure_error(Mc, W) == pytest.approx(R.self_duality_error(W, M, mG), rel=1e-12)
    # the reference's arithmetic on G = B A^T, densely
    K = len(W)
    G = W @ Mc.T
    G = G / np.linalg.norm(G) + 1 / K / np.sqrt(K - 1) - np.eye(K) / np.sqrt(K - 1)
    assert R.structure_error(Mc, W) == pytest.approx(np.linalg.norm(G), rel=1e-12)
    with pytest.raises(ValueError, match="like A"):
        R.structure_error(Mc, W[:3])


# --------------------------------------------------------------------------- NC4


def _reference_decisions(X, Y, W, M, K, b=None):
    """Per-class samples and agreements, as the reference's DecAccumulator counts them.

    Its linear decision is ``argmax_k w_k · x`` (no bias); ``b`` adds one.
    """
    logits = X @ W.T + (0 if b is None else b)
    lin = logits.argmax(1)
    ncc = ((X[:, None, :] - M[None]) ** 2).sum(-1).argmin(1)
    Ns = np.bincount(Y, minlength=K)
    hits = np.bincount(Y, weights=(lin == ncc).astype(np.float64), minlength=K)
    return Ns, hits


class _TorchDecAccumulator:
    """The state and ``compute`` of the reference's ``DecAccumulator`` (accumulate.py).

    ``ns_samples`` and ``totals`` are int32 (its default ``ctype``); ``compute``
    is the reference's ``Accumulator.compute``, ε-guarded in float32.
    """

    def __init__(self, Ns, hits):
        import torch

        self.torch = torch
        self.dtype = torch.float32
        self.ns_samples = torch.as_tensor(Ns, dtype=torch.int32)
        self.totals = torch.as_tensor(hits, dtype=torch.int32)

    def compute(self, idxs=None, weighted=False):
        pt = self.torch
        ns_samples, totals = self.ns_samples, self.totals
        if idxs is not None:
            ns_samples, totals = ns_samples[idxs], totals[idxs]
        eps = pt.finfo(self.dtype).eps
        avg = totals / (ns_samples + eps).to(self.dtype)
        if weighted:
            avg_G = ns_samples.to(self.dtype) @ avg / (ns_samples.sum() + eps)
        else:
            avg_G = avg.mean(dim=0)
        return avg, avg_G


def test_clf_ncc_agreement_accumulator_and_array_forms_agree():
    rng = np.random.default_rng(3)
    K = 6
    Ns = rng.integers(5, 40, size=K)
    Ns[2] = 0  # an empty class: rate 0 in the unweighted mean, as the reference
    hits = np.minimum(Ns, rng.integers(0, 40, size=K))
    acc = SimpleNamespace(ns_samples=Ns, totals=hits)
    assert R.clf_ncc_agreement(acc) == R.clf_ncc_agreement(Ns, hits) == hits.sum() / Ns.sum()
    rates = np.where(Ns > 0, hits / np.maximum(Ns, 1), 0.0)
    assert R.clf_ncc_agreement(acc, weighted=False) == pytest.approx(rates.mean(), rel=1e-15)
    assert R.clf_ncc_agreement(acc, None, False) == R.clf_ncc_agreement(Ns, hits, None, False)
    assert R.clf_ncc_agreement(Ns, misses=Ns - hits, weighted=False) == pytest.approx(rates.mean())
    idx = [0, 3, 4]
    want = hits[idx].sum() / Ns[idx].sum()
    assert R.clf_ncc_agreement(acc, idx) == pytest.approx(want, rel=1e-15)
    assert R.clf_ncc_agreement(Ns, hits, indices=idx) == pytest.approx(want, rel=1e-15)
    assert R.clf_ncc_agreement(acc, Ns > 20) == pytest.approx(
        hits[Ns > 20].sum() / Ns[Ns > 20].sum(), rel=1e-15
    )
    assert R.clf_ncc_agreement(acc, []) == 0.0  # no samples: 0 / (0 + eps)
    assert R.clf_ncc_agreement(Ns=Ns, hits=hits) == R.clf_ncc_agreement(accum=acc)
    assert R.clf_ncc_agreement(Ns) is None


def test_clf_ncc_agreement_matches_the_reference_compute_on_torch_counts():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    K = 8
    Ns = rng.integers(0, 50, size=K)
    hits = np.minimum(Ns, rng.integers(0, 50, size=K))
    acc = _TorchDecAccumulator(Ns, hits)
    for idxs in (None, [1, 2, 5], torch.tensor([0, 7]), torch.tensor([3])):
        for weighted in (True, False):
            want = acc.compute(idxs, weighted)[1].item()
            got = R.clf_ncc_agreement(acc, idxs, weighted)
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7), (idxs, weighted)
    assert R.clf_ncc_agreement(acc) == R.clf_ncc_agreement(
        torch.from_numpy(Ns), torch.from_numpy(hits)
    )
    # a 0-d index (filter_indices_by_n_samples for one class) is one class
    assert R.clf_ncc_agreement(acc, torch.tensor(3)) == R.clf_ncc_agreement(acc, [3])


def test_clf_ncc_agreement_rejects_mixed_or_wrong_arguments():
    Ns, hits = np.array([3, 4]), np.array([1, 2])
    acc = SimpleNamespace(ns_samples=Ns, totals=hits)
    with pytest.raises(TypeError, match="array form"):
        R.clf_ncc_agreement(acc, hits=hits)
    with pytest.raises(TypeError, match="twice"):
        R.clf_ncc_agreement(acc, [0], indices=[1])
    with pytest.raises(TypeError, match="twice"):
        R.clf_ncc_agreement(Ns, hits, hits=hits)
    with pytest.raises(TypeError):
        R.clf_ncc_agreement(acc, None, True, 1)
    with pytest.raises(TypeError, match="accumulator or the counts"):
        R.clf_ncc_agreement()
    mean_accum = SimpleNamespace(ns_samples=Ns, totals=np.ones((2, 5)))
    with pytest.raises(ValueError, match="DecAccumulator"):
        R.clf_ncc_agreement(mean_accum)


def test_measure_nc4_without_bias_is_the_references_agreement():
    rng = np.random.default_rng(5)
    K, D = 5, 4
    centres = 2.0 * rng.normal(size=(K, D))
    y = np.arange(400) % K
    X = centres[y] + rng.normal(size=(len(y), D))
    yt = rng.integers(0, K, size=300)
    Xt = centres[yt] + 1.5 * rng.normal(size=(len(yt), D))
    W = centres + 0.8 * rng.normal(size=(K, D))
    b = 10.0 * rng.normal(size=K)
    stats = dense_stats(X, y, K)
    M = np.stack([X[y == k].mean(0) for k in range(K)])

    Ns, hits_free = _reference_decisions(Xt, yt, W, M, K)
    _, hits_biased = _reference_decisions(Xt, yt, W, M, K, b)
    free, biased = hits_free.sum() / Ns.sum(), hits_biased.sum() / Ns.sum()
    assert abs(free - biased) > 0.02  # the bias changes decisions here

    test = split(Xt, yt, chunks=64)
    got_free = measure(stats, weights=W, test=test, metrics="nc4_agree")["nc4_agree"]
    got_none = measure(stats, weights=W, bias=None, test=test, metrics="nc4_agree")
    got_zero = measure(stats, weights=W, bias=np.zeros(K), test=test, metrics="nc4_agree")
    got_biased = measure(stats, weights=W, bias=b, test=test, metrics="nc4_agree")
    assert float(got_free) == pytest.approx(free, rel=1e-12)
    assert float(got_none["nc4_agree"]) == float(got_zero["nc4_agree"]) == float(got_free)
    assert float(got_biased["nc4_agree"]) == pytest.approx(biased, rel=1e-12)
    # and the reference's call on its accumulator gives the bias-free number
    acc = SimpleNamespace(ns_samples=Ns, totals=hits_free)
    assert R.clf_ncc_agreement(acc) == pytest.approx(float(got_free), rel=1e-12)


# --------------------------------------------------------------------------- the page


def test_the_migration_page_maps_every_reference_name_and_its_imports_run():
    page = (Path(__file__).parents[1] / "docs" / "migration.md").read_text()
    table = page[page.index("## Function by function"):]
    missing = [n for n in compat.REFERENCE if f"`{n}(" not in table and f"`{n}`" not in table]
    assert not missing, f"docs/migration.md's table lacks {missing}"
    imports = re.search(r"from ncdask\.compat import \(.*?\)", page, re.S).group(0)
    exec(imports, {})  # the example's only changed lines

"""A small dense NumPy implementation of SPEC.md, for tests.

Everything straight from the definitions, with full K×K matrices and
difference tensors: slow, obvious and independent of ncdask's kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dense import CASES, GOLDEN, class_data, golden, split  # noqa: F401 - re-exported
from dense import dense_stat_arrays as _dense_arrays

EPS = np.finfo(np.float64).eps


def _no_compute(*args, **kwargs):
    raise AssertionError("computed something")


@contextlib.contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail on any dask compute inside the block (a lazy API must build, not run)."""
    with dask.config.set(scheduler=_no_compute):
        yield


def dense_stats(
    X: np.ndarray,
    y: np.ndarray,
    K: int,
    *,
    weighted: bool = False,
    chunks: int | tuple | None = None,
) -> xr.Dataset:
    """Class statistics as the ``class_stats`` contract Dataset (two dense passes).

    ``means`` is dask-backed (chunked by ``chunks`` along the class axis),
    ``counts`` is in memory, empty classes have NaN means and variance norms.
    """
    y = np.asarray(y)
    D = np.shape(X)[1]
    d = _dense_arrays(X, y, K, weighted=weighted)
    counts, means = d["counts"].astype(np.int64), d["means"]
    gm, var_norms = d["global_mean"], d["var_norms"]
    Sw = d["within_cov"] * max(len(X), 1)
    ch = K if chunks is None else chunks
    ds = xr.Dataset(
        {
            "counts": (("class",), counts),
            "means": (("class", "feature"), da.from_array(means, chunks=(ch, -1))),
            "global_mean": (("feature",), da.from_array(gm)),
            "within_cov": (("feature", "feature_"), da.from_array(Sw / max(len(X), 1))),
            "var_norms": (("class",), da.from_array(var_norms, chunks=(ch,))),
            "n_samples": ((), np.int64(len(X))),
        },
        coords={"class": np.arange(K), "feature": np.arange(D), "feature_": np.arange(D)},
    )
    ds.attrs.update(
        n_classes=K,
        dim=D,
        global_mean="weighted" if weighted else "unweighted",
        empty_classes=np.nonzero(counts == 0)[0].tolist(),
    )
    return ds


def _etf_err(A: np.ndarray, B: np.ndarray) -> float:
    K = A.shape[0]
    G = B @ A.T
    G = G / np.linalg.norm(G)
    E = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    return float(np.linalg.norm(G - E))


def _erank(lam: np.ndarray) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the normalised spectrum."""
    lam = np.clip(lam, 0, None)
    p = lam / lam.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def dense_spectra(X: np.ndarray, y: np.ndarray) -> dict:
    """``vci``, ``alpha_req`` and ``rankme`` straight from the samples: the total covariance
    around the sample mean, its pseudo-inverse (``np.linalg.pinv``, cutoff D eps sigma_1), a
    ``polyfit`` of the log spectrum and the SVD of the raw embedding matrix."""
    X = np.asarray(X, dtype=np.float64)
    N, D = X.shape
    xbar = X.mean(0)
    St = (X - xbar).T @ (X - xbar) / N
    classes = np.unique(y)
    Sb = sum((y == k).mean() * np.outer(X[y == k].mean(0) - xbar, X[y == k].mean(0) - xbar)
             for k in classes)
    out = {}
    if len(classes) > 1:
        out["vci"] = 1 - np.trace(np.linalg.pinv(St, rcond=D * EPS, hermitian=True) @ Sb) / min(
            D, len(classes) - 1)
    lam = np.linalg.eigvalsh(St)[::-1]
    lam = lam[lam > D * EPS * lam[0]]
    out["alpha_req"] = (-np.polyfit(np.log(np.arange(1, lam.size + 1)), np.log(lam), 1)[0]
                        if lam.size > 1 else np.nan)
    p = np.linalg.svd(X, compute_uv=False)
    p = p / p.sum() + 1e-7
    out["rankme"] = np.exp(-(p * np.log(p)).sum())
    return out


def dense_metrics(
    X: np.ndarray,
    y: np.ndarray,
    K: int,
    *,
    W: np.ndarray | None = None,
    b: np.ndarray | None = None,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    X_ood: np.ndarray | None = None,
    y_ood: np.ndarray | None = None,
    dist_exp: float = 1.0,
    riesz_s: float | None = None,
    weighted: bool = False,
    by_frequency: int | None = None,
) -> dict:
    """Every SPEC.md metric over the non-empty classes, from K×K matrices."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    D = X.shape[1]
    counts = np.bincount(y, minlength=K)
    pres = np.nonzero(counts)[0]
    Kp = len(pres)
    M = np.stack([X[y == k].mean(0) for k in pres])
    v = np.array([((X[y == k] - M[i]) ** 2).sum(1).mean() for i, k in enumerate(pres)])
    Sw = sum(((X[y == k] - M[i]).T @ (X[y == k] - M[i])) for i, k in enumerate(pres)) / len(X)
    mG = X.mean(0) if weighted else M.mean(0)
    Mc = M - mG
    Sb = Mc.T @ Mc / Kp
    out: dict = {}
    with np.errstate(all="ignore"):
        out["nc1_pinv"] = np.trace(np.linalg.pinv(Sb, rcond=D * EPS) @ Sw) / Kp
        if Kp - 1 < D:
            U, s, _ = np.linalg.svd(Sb)
            U, s = U[:, : Kp - 1], s[: Kp - 1]
            out["nc1_svd"] = np.trace(Sw @ U @ np.diag(1 / s) @ U.T) / Kp
        out["nc1_quot"] = np.trace(Sw) / np.trace(Sb)
        iu = np.triu_indices(Kp, 1)
        diff = M[:, None] - M[None]
        d2 = (diff**2).sum(-1)
        out["nc1_cdnv"] = (((v[:, None] + v[None]) / 2) / d2**dist_exp)[iu].mean()
        out["nc2_etf_err"] = _etf_err(Mc, Mc)
        u = Mc / (np.linalg.norm(Mc, axis=1, keepdims=True) + EPS)
        du = np.linalg.norm(u[:, None] - u[None], axis=-1)[iu]
        S = D - 2 if riesz_s is None else riesz_s
        for name, val in (
            ("dist", du),
            ("log", np.log(1 / du)),
            ("riesz", np.sign(S) * du ** (-S)),
        ):
            out[f"nc2g_{name}_mean"] = val.mean()
            out[f"nc2g_{name}_var"] = val.var()
        out["nc2g_riesz_log_mean"] = np.log(abs(out["nc2g_riesz_mean"]))
        out["nc2g_riesz_log_var"] = np.log(out["nc2g_riesz_var"])
        norms = np.linalg.norm(Mc, axis=1)
        out["mean_norms"] = norms
        out["nc2_equinorm"] = norms.std(ddof=1) / norms.mean()
        cos = (u @ u.T)[iu]
        off = (u @ u.T)[~np.eye(Kp, dtype=bool)]  # every ordered pair i != j
        out["interference_mean"] = off.mean()
        out["interference_var"] = off.var()
        out["erank_within"] = _erank(np.linalg.eigvalsh(Sw))
        out.update(dense_spectra(X, y))
        if Kp >= 2:
            out["erank_between"] = _erank(np.linalg.eigvalsh(Sb))
        if len(cos) > 1:
            out["nc2_equiangle"] = cos.std(ddof=1)
        out["nc2_max_angle"] = np.abs(cos + 1 / (Kp - 1)).mean()
        if W is not None:
            W = np.asarray(W, dtype=np.float64)[pres]
            bb = np.zeros(Kp) if b is None else np.asarray(b, dtype=np.float64)[pres]
            sims = (W * Mc).sum(1)
            out["similarities"] = sims
            out["similarities_cos"] = sims / (  # torch clamps each norm on its own
                np.maximum(np.linalg.norm(W, axis=1), 1e-8) * np.maximum(norms, 1e-8))
            nw = W / (np.linalg.norm(W, axis=1, keepdims=True) + EPS)
            out["distance_norms"] = np.linalg.norm(nw - u, axis=1)
            out["nc3_dual_err"] = _etf_err(Mc, W)
            out["nc3u_uni_dual"] = sims.var(ddof=1)
            out["nc3_papyan"] = ((W / np.linalg.norm(W) - Mc / np.linalg.norm(Mc)) ** 2).sum()
            mu_w = (counts[pres][:, None] * M).sum(0) / counts.sum()
            out["nc3_bias"] = np.linalg.norm(W @ mu_w + bb)
            out["nc2w_etf_err"] = _etf_err(W, W)
            out["nc0_w_sum"] = np.linalg.norm(W.sum(0))
            out["erank_w"] = _erank(np.linalg.svd(W, compute_uv=False))
            wn = np.linalg.norm(W, axis=1)
            out["nc2w_equinorm"] = wn.std(ddof=1) / wn.mean()
            wu = W / (wn[:, None] + EPS)
            out["nc2w_max_angle"] = np.abs((wu @ wu.T)[iu] + 1 / (Kp - 1)).mean()
            if X_test is not None:
                Xt = np.asarray(X_test, dtype=np.float64)
                yt = np.asarray(y_test)
                lin = (Xt @ W.T + bb).argmax(1)
                ncc = ((Xt[:, None] - M[None]) ** 2).sum(-1).argmin(1)
                ok = (yt >= 0) & (yt < K)
                agree = (lin == ncc)[ok]
                out["nc4_agree"] = agree.mean()
                out["agree_per_class"] = np.array(
                    [agree[yt[ok] == k].mean() if (yt[ok] == k).any() else np.nan for k in pres]
                )
    if by_frequency is not None:  # bins: classes ranked by count (ties: smaller index first)
        order = np.lexsort((np.arange(Kp), -counts[pres]))
        bins = [np.sort(b) for b in np.array_split(order, by_frequency)]
        tr_sb = np.trace(Sb)
        with np.errstate(all="ignore"):
            Sb_pinv = np.linalg.pinv(Sb, rcond=D * EPS)
        # class k's term of nc1_pinv: tr(Sigma_B^+ S_k) / (N K), S_k its scatter
        scat = [(X[y == k] - M[i]).T @ (X[y == k] - M[i]) for i, k in enumerate(pres)]
        cd, qs, ag, ps, cm = [], [], [], [], []
        for bi in bins:
            ub = u[bi] @ u[bi].T  # every ordered pair of the bin, enumerated
            cm.append(ub[~np.eye(len(bi), dtype=bool)].mean() if len(bi) > 1 else np.nan)
            iu_b = np.triu_indices(len(bi), 1)
            d2b = ((M[bi][:, None] - M[bi][None]) ** 2).sum(-1)[iu_b]
            vb = ((v[bi][:, None] + v[bi][None]) / 2)[iu_b]
            cd.append((vb / d2b ** dist_exp).mean() if len(bi) > 1 else np.nan)
            qs.append((counts[pres][bi] * v[bi]).sum() / len(X) / tr_sb)
            ps.append(sum(np.trace(Sb_pinv @ scat[i]) for i in bi) / len(X) / Kp)
            if "nc4_agree" in out:
                ok = np.isin(yt, pres[bi])
                ag.append((lin == ncc)[ok].mean())
        out["nc1_cdnv_by_frequency"], out["nc1_quot_by_frequency"] = np.array(cd), np.array(qs)
        out["nc1_pinv_by_frequency"] = np.array(ps)
        out["cos_mean_by_frequency"] = np.array(cm)
        if ag:
            out["nc4_agree_by_frequency"] = np.array(ag)
    if X_ood is not None:
        Xo = np.asarray(X_ood, dtype=np.float64)
        if y_ood is not None:
            yo = np.asarray(y_ood)
            mo = np.mean([Xo[yo == lab].mean(0) for lab in np.unique(yo)], axis=0)
        else:
            mo = Xo.mean(0)
        cosm = M @ mo / (np.linalg.norm(M, axis=1) * np.linalg.norm(mo))
        out["nc5_ood_dev"] = np.abs(cosm).mean()
        # NC1 with the OOD samples as class K+1 (their labels ignored)
        mu_o, N, n_o = Xo.mean(0), len(X), len(Xo)
        M2 = np.vstack([M, mu_o])
        Sw2 = (Sw * N + (Xo - mu_o).T @ (Xo - mu_o)) / (N + n_o)
        mG2 = ((counts[pres][:, None] * M).sum(0) + n_o * mu_o) / (N + n_o) if weighted \
            else M2.mean(0)
        Sb2 = (M2 - mG2).T @ (M2 - mG2) / (Kp + 1)
        with np.errstate(all="ignore"):
            out["nc1_ood_class"] = np.trace(np.linalg.pinv(Sb2, rcond=D * EPS) @ Sw2) / (Kp + 1)
    return {k: (np.asarray(v) if np.ndim(v) else float(v)) for k, v in out.items()}


def small_case(seed=0, K=6, D=9, n_per=6, spread=3.0, *, n_test=50, empty=False):
    """A small random problem: train, classifier, test and labelled OOD data.

    ``n_per`` training rows a class (an int or one count a class); ``empty``: class K // 2
    has none.
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D)) * spread
    y = np.repeat(np.arange(K), n_per)
    X, y = class_data(rng, means, y[y != K // 2] if empty else y)
    W = means + 0.3 * rng.normal(size=(K, D))
    b = rng.normal(size=K)
    Xt, yt = class_data(rng, means, rng.integers(0, K, n_test), noise=1.5)
    Xo = rng.normal(size=(40, D)) + 0.5
    yo = rng.integers(0, 3, size=40)
    return X, y, W, b, Xt, yt, Xo, yo


def dense_ood_class(X, y, Xo, K, weighted=False):
    """nc1_pinv of the K classes plus the OOD samples as class K+1, densely."""
    Xa = np.concatenate([X, Xo])
    ya = np.concatenate([y, np.full(len(Xo), K)])
    return dense_metrics(Xa, ya, K + 1, weighted=weighted)["nc1_pinv"]

"""Every metric as a declaration: :data:`METRICS`, one :class:`Metric` per output variable.

A declaration labels the metric, says what it needs and when it is defined,
and computes it from one :class:`Inputs` or as a column of the fused pairwise
kernel. Adding a metric is adding a declaration here (and a dense reference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ncdask.graph import closed_forms as CF
from ncdask.graph import decisions as DG
from ncdask.graph import shares as SG
from ncdask.graph import tiled_stats as TS
from ncdask.graph.pairwise import pairwise_moments
from ncdask.kernels import shares as KS
from ncdask.kernels.decisions import MARGIN_EDGES
from ncdask.kernels.pairwise import FINAL, PAIR_STATS
from ncdask.metrics.inputs import (
    ClassInputs,
    KeptClasses,
    as_dask,
    float64,
    like,
    row_weights,
    split_of,
    take_rows,
)
from ncdask.metrics.summary import (
    agreement_from_summary,
    is_summary,
    margins_from_summary,
    ood_class_from_summary,
    ood_mean_from_summary,
    summary_dim,
)

PAPYAN = ("Papyan, Han & Donoho (2020), Prevalence of neural collapse during the terminal phase "
          "of deep learning training, PNAS 117(40)")
HAN = ("Han, Papyan & Donoho (2022), Neural collapse under MSE loss: proximity to and dynamics "
       "on the central path, ICLR")
TIRER = "Tirer, Huang & Niles-Weed (2023), Perturbation analysis of neural collapse, ICML"
GALANTI = ("Galanti, György & Hutter (2022), On the role of neural collapse in transfer "
           "learning, ICLR (arXiv:2112.15121)")
LIU = ("Liu et al. (2023), Generalizing and decoupling neural collapse via hyperspherical "
       "uniformity gap, ICLR (arXiv:2303.06484)")
KOTHAPALLI = ("Kothapalli (2023), Neural collapse: a review on modelling principles and "
              "generalization, TMLR (arXiv:2206.04041)")
ZHU = ("Zhu et al. (2021), A geometric analysis of neural collapse with unconstrained features, "
       "NeurIPS")
AMMAR = ("Ammar et al. (2024), NECO: NEural Collapse based Out-of-distribution detection, ICLR "
         "(arXiv:2310.06823)")
WU = ("Wu & Papyan (2024), Linguistic collapse: neural collapse in (large) language models, "
      "NeurIPS (arXiv:2405.17767)")
FANG = ("Fang, He, Long & Su (2021), Exploring deep neural networks via layer-peeled model: "
        "minority collapse in imbalanced training, PNAS 118(43)")
ROY = "Roy & Vetterli (2007), The effective rank: a measure of effective dimensionality, EUSIPCO"
JIANG = ("Jiang et al. (2024), Generalized neural collapse for a large number of classes, ICML "
         "(arXiv:2310.05351); Markou et al. (2024), Guiding neural collapse, NeurIPS "
         "(arXiv:2411.01248), validate_NC.py")
XU = ("Xu & Liu (2023), Quantifying the variability collapse of neural networks, ICML "
      "(arXiv:2306.03440)")
AGRAWAL = ("Agrawal et al. (2022), alpha-ReQ: assessing representation quality in self-supervised "
           "learning by measuring eigenspectrum decay, NeurIPS")
GARRIDO = ("Garrido et al. (2023), RankMe: assessing the downstream performance of pretrained "
           "self-supervised representations by their rank, ICML (arXiv:2210.02885)")


@dataclass(frozen=True)
class Inputs:
    """Everything the metrics of one measurement are functions of; the shared
    intermediates are cached properties, built on first use, once."""

    stats: xr.Dataset
    kept: KeptClasses
    cls: ClassInputs
    todo: tuple[str, ...]
    tile_size: int
    test: Any = None
    ood: Any = None
    dist_exp: float = 1.0
    riesz_s: float = 0.0
    nc4_backend: str = "gemm"
    ood_labels: bool | None = None
    split_every: int | None = None
    memory_budget: int | None = None
    by_frequency: int | None = None
    mu_weighted: da.Array | None = None
    ood_mean: da.Array | None = None
    train: Any = None

    @classmethod
    def from_arrays(cls, *, M: da.Array | None = None, W: da.Array | None = None,
                    b: da.Array | None = None, mG: da.Array | None = None,
                    mu_weighted: da.Array | None = None, tile_size: int | None = None,
                    todo: tuple[str, ...] = (), Sw: da.Array | None = None,
                    v: da.Array | None = None, eps_dtype: Any = np.float64,
                    dist_exp: float = 1.0, riesz_s: float = 0.0,
                    ood_mean: da.Array | None = None) -> Inputs:
        """Inputs of float64 row arrays taken as given (for :mod:`ncdask.compat`).
        ``M`` is centred on ``mG`` (if given); without ``M`` the classifier
        rows stand in for it (the ``nc2w_*`` metrics). ``mu_weighted`` is
        ``nc3_bias``'s global mean, ``eps_dtype`` sets NC1's pinv cutoff."""
        A = M if M is not None else W
        K, D = A.shape
        expect = {"W": (W, (K, D)), "b": (b, (K,)), "mG": (mG, (D,)), "Sw": (Sw, (D, D)),
                  "v": (v, (K,)), "ood_mean": (ood_mean, (D,)), "mu_weighted": (mu_weighted, (D,))}
        for what, (arr, shape) in expect.items():
            if arr is not None and tuple(arr.shape) != shape:
                raise ValueError(f"{what} has shape {tuple(arr.shape)}, expected {shape} "
                                 f"for {K} classes of width {D}")
        T = int(tile_size) if tile_size else K
        A = A.rechunk((min(T, K), -1))
        Mc = A if mG is None or M is None else A - mG.rechunk(-1)[None, :]
        if W is not None:
            W = W.rechunk(A.chunks)
            b = da.zeros(K, chunks=(A.chunks[0],), dtype=np.float64) if b is None else b
        kept = KeptClasses(counts=np.ones(K, dtype=np.int64), present=np.arange(K), empty=[],
                           filtered=[], refiltered=False, ignore_index=None)
        if v is not None:
            v = v.rechunk((A.chunks[0],))
        ci = ClassInputs(M=A, Mc=Mc, mG=mG, v=v, Sw=Sw, W=W, b=b,
                         eps_dtype=np.dtype(eps_dtype))
        return cls(stats=None, kept=kept, cls=ci, todo=tuple(todo), tile_size=T,
                   mu_weighted=mu_weighted, dist_exp=float(dist_exp), riesz_s=float(riesz_s),
                   ood_mean=ood_mean)

    K = property(lambda self: self.kept.n_kept, doc="Classes measured.")
    K_all = property(lambda self: self.kept.n_all, doc="Classes of the statistics.")
    D = property(lambda self: int(self.cls.M.shape[1]), doc="Width of the embeddings.")
    M = property(lambda self: self.cls.M, doc="Class means of the kept classes.")
    Mc = property(lambda self: self.cls.Mc, doc="Centred class means.")
    W = property(lambda self: self.cls.W, doc="Classifier rows of the kept classes (or None).")
    b = property(lambda self: self.cls.b, doc="Their bias.")
    Sw = property(lambda self: self.cls.Sw, doc="Within-class covariance.")

    @cached_property
    def terms(self) -> dict[str, da.Array] | None:
        """Every class-tile reduction of the closed forms in one read of each tile (K > D)."""
        if self.K <= self.D or self.Mc is None:
            return None
        unit = any(n.startswith("interference") for n in self.todo)
        cross = "nc3_dual_err" in self.todo and self.K == self.D + 1  # an exact nc3_dual_err
        return CF.tile_terms(self.Mc, self.W, unit=unit, cross=cross)

    @cached_property
    def nc1(self) -> da.Array:
        return CF.nc1_values(self.Mc, self.Sw, want_svd="nc1_svd" in self.todo,
                             eps_dtype=self.cls.eps_dtype, terms=self.terms)

    @cached_property
    def pairwise(self) -> dict[str, da.Array]:
        """Rows of the one fused pairwise graph, by statistic, for every one asked for."""
        want = {METRICS[n].pair_stat for n in self.todo} - {None}
        stats = [s for s in PAIR_STATS if s in want]
        res = pairwise_moments(
            self.Mc, stats=stats, v=self.cls.v if "cdnv" in want else None,
            W=self.W if "wcos_dev" in want else None, tile_size=self.tile_size,
            dist_exp=self.dist_exp, riesz_s=self.riesz_s, inv_km1=1.0 / (self.K - 1),
            split_every=self.split_every)
        return {s: res[i] for i, s in enumerate(stats)}

    def pair(self, stat: str, column: str) -> da.Array:
        """One named column (:data:`ncdask.kernels.pairwise.FINAL`) of a pairwise statistic."""
        return self.pairwise[stat][FINAL.index(column)]

    @property
    def n_samples(self) -> int:
        """The samples behind Σ_W: the statistics' ``n_samples``, else the classes' counts."""
        st = self.stats
        return (int(np.asarray(st["n_samples"].values)) if "n_samples" in st
                else int(self.kept.counts.sum()))

    @cached_property
    def norms(self) -> da.Array:
        return CF.row_norms(self.Mc)

    @cached_property
    def M_sq(self) -> da.Array:
        """``‖M̃‖²_F = K tr Σ_B`` (from the tile fold when it runs)."""
        return (self.Mc * self.Mc).sum() if self.terms is None else self.terms["M_sq"]

    @cached_property
    def sims(self) -> da.Array:
        return (self.W * self.Mc).sum(axis=1)

    @cached_property
    def agreement(self) -> tuple[da.Array, da.Array]:
        """Per-class (by true label) NC4 hits and counts; hits NaN for a classifier with
        non-finite or all-zero weights, which decides nothing."""
        if is_summary(self.test, "test"):
            hits, n_test = agreement_from_summary(self.test, self.M, self.W, self.b, self.kept,
                                                  self.stats)
        else:
            dec, agree, y = self.decided
            hits, n_test = DG.agreement_counts(agree, y.rechunk(agree.chunks), self.K_all,
                                               ignore_index=self.kept.ignore_index)
        dead = ~da.isfinite(self.W).all() | ~(self.W != 0).any() | ~da.isfinite(self.b).all()
        return da.where(DG.on_host(dead), np.nan, hits), n_test  # the counts are on the host

    @cached_property
    def decided(self) -> tuple[da.Array, da.Array, da.Array]:
        """The test split's NC4 decisions (with the margin columns when a margin is asked
        for), the per-sample agreement and the labels: one blocked pass for both."""
        return _decide(self)

    @cached_property
    def margins(self) -> tuple[da.Array, da.Array]:
        """``margin_mean`` and ``margin_hist`` from the NC4 pass (or the streamed summary)."""
        if is_summary(self.test, "test"):
            return margins_from_summary(self.test, self.M, self.W, self.b, self.kept, self.stats)
        return DG.margins(self.decided[0])

    @cached_property
    def bins(self) -> list[np.ndarray]:
        """Positions (among the kept classes) of each class-count bin, most frequent first:
        the classes ranked by count (ties: smaller index first), cut in near-equal groups."""
        n = self.kept.counts[self.kept.present]
        order = np.lexsort((np.arange(n.size), -n))
        return [np.sort(b) for b in np.array_split(order, int(self.by_frequency))]

    def per_bin(self, fn: Callable[[np.ndarray], Any], within: bool = False) -> da.Array:
        """``fn(positions)`` for every bin, stacked on the bin axis; ``within``: NaN for a bin
        of one-sample classes only, whose within-class variability is unestimable, not 0."""
        n = self.kept.counts[self.kept.present]
        return da.stack([like(da.asarray(np.nan if within and (n[b] < 2).all() else fn(b),
                                         dtype=np.float64), self.M) for b in self.bins])

    @cached_property
    def spectra(self) -> da.Array:
        """``[vci, alpha_req, rankme]`` of ``Σ_T = Σ_W + Σ_B^f`` (NaN where not asked for):
        Σ_B^f weighted by ``n_k/N`` around the sample mean of the classes measured, Σ_W as
        stored (1/N; classes ``min_count`` leaves out here stay pooled in it, as in NC1)."""
        n = self.kept.counts[self.kept.present].astype(np.float64)
        want = tuple(m in self.todo for m in ("vci", "alpha_req", "rankme"))
        return CF.total_spectra(self.M, self.Sw, row_weights(n / n.sum(), self.M),
                                n_rows=int(n.sum()), want=want, eps_dtype=self.cls.eps_dtype)

    @cached_property
    def gram_M(self) -> da.Array:
        """A Gram matrix of the centred means: ``MᵀM`` of the tile fold when K > D, else K×K."""
        return self.terms["MM"] if self.terms is not None else CF.small_gram(self.Mc)

    @cached_property
    def interference(self) -> da.Array:
        """``[mean, var]`` of the off-diagonal cosines of the centred means."""
        return CF.interference(self.Mc, self.terms)


def _labelled_split(ins: Inputs, data: Any, role: str, why: str) -> tuple[da.Array, da.Array]:
    """The embeddings (as stored, on the statistics' device: the kernels cast them block by
    block) and labels of a split of their classes, checked: labels, the statistics'
    width and number of classes."""
    split = split_of(data)
    if "labels" not in split:
        raise ValueError(f"the {role} split needs 'labels' for {why}")
    X = like(as_dask(split["embeddings"]), ins.M)
    if X.ndim != 2 or X.shape[1] != ins.D:
        raise ValueError(f"{role} embeddings have shape {X.shape}, expected (n, {ins.D}) "
                         "like the statistics")
    k = split.attrs.get("n_classes")
    if k is not None and int(k) != ins.K_all:
        raise ValueError(f"the {role} split has n_classes={int(k)}, the statistics "
                         f"{ins.K_all}: {why} needs a split of the same classes")
    return X, as_dask(split["labels"])


def _decide(ins: Inputs) -> tuple[da.Array, da.Array, da.Array]:
    """NC4 decisions of the test split (blocked GEMMs or FAISS), with the margin columns
    when a margin metric is asked for; the per-sample agreement; the labels."""
    X, y = _labelled_split(ins, ins.test, "test", "NC4")
    mG = ins.cls.mG
    pos = None
    if set(GROUPS["margins"]) & set(ins.todo):
        pos = DG.class_positions(y, ins.kept.present, ins.K_all, ins.kept.ignore_index)
    kw = dict(tile_size=ins.tile_size, split_every=ins.split_every, budget=ins.memory_budget,
              positions=pos)
    if ins.nc4_backend == "gemm":
        dec = DG.decisions(X, ins.W, ins.b, ins.Mc, mG, **kw)
        agree = dec[:, 1] == dec[:, 3]
    elif ins.nc4_backend == "faiss":
        dec = DG.decisions(X, ins.W, ins.b, ins.Mc, mG, ncc=False, **kw)
        ncc = DG.faiss_ncc(X, ins.Mc, mG)
        agree = dec[:, 1].rechunk(ncc.chunks) == ncc
    else:
        raise ValueError(f"nc4_backend must be 'gemm' or 'faiss', got {ins.nc4_backend!r}")
    return dec, agree, y


def _ood_mean(ins: Inputs) -> da.Array:
    if ins.ood_mean is not None:  # given as is (ncdask.compat)
        return ins.ood_mean
    if is_summary(ins.ood, "ood"):
        if summary_dim(ins.ood) != ins.D:
            raise ValueError(f"the streamed OOD summary has width {summary_dim(ins.ood)}, "
                             f"the statistics {ins.D}")
        return ood_mean_from_summary(ins.ood, ins.ood_labels, ins.M)
    split = ins.ood if isinstance(ins.ood, xr.Dataset) else split_of(ins.ood)
    Xo = like(float64(as_dask(split["embeddings"])), ins.M)
    if Xo.ndim != 2 or Xo.shape[1] != ins.D:  # here, not as a broadcast error at compute
        raise ValueError(f"OOD embeddings have shape {Xo.shape}, expected (n, {ins.D}) "
                         "like the statistics")
    use = "labels" in split if ins.ood_labels is None else bool(ins.ood_labels)
    yo = as_dask(split["labels"]) if use else None
    return DG.ood_global_mean(Xo, yo, ignore_index=ins.kept.ignore_index)


def _nc3_bias(ins: Inputs) -> da.Array:
    if ins.mu_weighted is not None or ins.stats is None:  # rows as given: μ_G passed (or 0)
        mu_w = ins.mu_weighted
    else:
        n_k = ins.kept.counts[ins.kept.present].astype(np.float64)
        frac = row_weights(n_k / n_k.sum(), ins.M)
        mu_w = (ins.M * frac[:, None]).sum(axis=0)
    z = ins.b if mu_w is None else ins.W @ mu_w + ins.b
    return da.sqrt((z * z).sum())


def _nc1_ood_class(ins: Inputs) -> da.Array:
    """``nc1_pinv`` with the OOD set (a split or a streamed summary) as class K+1."""
    M, ood = ins.M, ins.ood
    D = M.shape[1]
    if is_summary(ood, "ood"):
        if summary_dim(ood) != D:
            raise ValueError(f"the streamed OOD summary has width {summary_dim(ood)}, "
                             f"the statistics {D}")
        one = ood_class_from_summary(ood, M)
    else:
        split = split_of(ood)
        Xo = like(as_dask(split["embeddings"]), M)
        if Xo.ndim != 2 or Xo.shape[1] != D:
            raise ValueError(f"OOD embeddings have shape {Xo.shape}, expected (n, {D})")
        yo = as_dask(split["labels"]) if "labels" in split else None
        one = TS.one_class_stats(Xo, yo, ignore_index=ins.kept.ignore_index)
    return TS.ood_class_nc1(M, ins.Sw, ins.n_samples, ins.kept.counts[ins.kept.present], one,
                            global_mean=ins.stats.attrs.get("global_mean", "unweighted"),
                            eps_dtype=ins.cls.eps_dtype)


def _w_sum(ins: Inputs) -> da.Array:
    s = ins.terms["W_sum"] if ins.terms is not None else ins.W.sum(axis=0)
    return da.sqrt((s * s).sum())


def _cdnv_of(ins: Inputs, idx: np.ndarray) -> Any:
    if idx.size < 2:
        return np.nan
    Mc, v = take_rows(ins.Mc, idx), take_rows(ins.cls.v, idx)
    res = pairwise_moments(Mc, stats=["cdnv"], v=v, tile_size=ins.tile_size,
                           dist_exp=ins.dist_exp, riesz_s=ins.riesz_s,
                           inv_km1=1.0 / (idx.size - 1), split_every=ins.split_every)
    return res[0, FINAL.index("mean")]


def _quot_share(ins: Inputs, idx: np.ndarray) -> Any:
    """The bin's share of ``nc1_quot``: ``Σ_{k∈bin} (n_k/N) v_k / tr(Σ_B)`` (shares add up)."""
    n = ins.kept.counts[ins.kept.present].astype(np.float64)
    w = as_dask(n[idx] / n.sum()).rechunk(-1)
    w = like(w, ins.M)
    return (take_rows(ins.cls.v, idx).rechunk(-1) * w).sum() / (ins.M_sq / ins.K)


def _pinv_shares(ins: Inputs) -> da.Array:
    """Every bin's share of ``nc1_pinv`` in one pass over ``train`` (:mod:`ncdask.graph.shares`);
    the shares add up to it, less classes ``min_count`` leaves out but Σ_W pools."""
    X, y = _labelled_split(ins, ins.train, "train", "nc1_pinv_by_frequency")
    L, sign = SG.pinv_factor(ins.Mc, ins.Sw, eps_dtype=ins.cls.eps_dtype, terms=ins.terms)
    lookup = np.full(ins.K_all, -1, dtype=np.int64)
    lookup[ins.kept.present] = np.arange(ins.K)
    sums, qm = SG.class_pinv_sums(X, y, ins.Mc, ins.cls.mG, L, sign, lookup=lookup,
                                  budget=ins.memory_budget, split_every=ins.split_every)
    bin_of = np.zeros(ins.K, dtype=np.int64)
    for i, b in enumerate(ins.bins):
        bin_of[b] = i
    shares = CF.delayed_array(KS.bin_shares, sums, qm, ins.kept.counts[ins.kept.present], bin_of,
                              len(ins.bins), float(ins.n_samples) * ins.K,
                              shape=(len(ins.bins),), like=ins.M)
    return da.where(ins.per_bin(lambda idx: 0.0, within=True) == 0, shares, np.nan)


def _cos_mean_of(U: da.Array, idx: np.ndarray) -> Any:
    """Mean cosine over the ordered pairs ``i ≠ j`` of the bin's rows of ``U`` (unit centred
    means): ``(‖Σ u_k‖² − Σ ‖u_k‖²) / (C(C−1))``, no pair visited; NaN below two classes."""
    if idx.size < 2:
        return np.nan
    u = take_rows(U, idx)
    s = u.sum(axis=0)
    return ((s * s).sum() - (u * u).sum()) / (idx.size * (idx.size - 1.0))


def _agree_of(ins: Inputs, idx: np.ndarray) -> Any:
    hits, n_test = ins.agreement
    cls = ins.kept.present[idx]
    return hits[cls].sum() / n_test[cls].sum()


def _svd_defined(K: int, D: int) -> str | None:
    return None if K - 1 < D else f"defined only when K-1 < D (K={K}, D={D})"


@dataclass(frozen=True)
class Metric:
    """One output variable: labels, needs, and either ``compute`` (:class:`Inputs` -> lazy
    array) or ``pair`` (a column of the fused pairwise kernel); ``pair_stat`` names what a
    ``compute`` reads through :meth:`Inputs.pair` (one fused graph for all)."""

    long_name: str
    formula: str
    reference: str
    needs: tuple[str, ...] = ()
    per_class: bool = False
    per_bin: bool = False
    min_classes: int = 2
    compute: Callable[[Inputs], Any] | None = None
    pair: tuple[str, str] | None = None
    pair_stat: str | None = None
    defined: Callable[[int, int], str | None] | None = None
    within: bool = False  # of Σ_W or the variance norms: NaN when no class has two samples
    dim: str | None = None  # a dim of its own (``margin_bin``: coordinates by :func:`dim_coords`)
    summary_var: str | None = None  # what a streamed test summary must hold for it
    value_range: str = "(-inf, inf)"  # the values it can take (K classes, D dims, P pairs)
    direction: int | None = None  # -1: lower is more collapse, +1: higher is, None: neither
    cost: str = ""  # what computing it reads and costs beyond the class statistics

    def __post_init__(self) -> None:
        if (self.compute is None) == (self.pair is None):
            raise ValueError("a metric is computed by exactly one of compute= and pair=")
        if self.pair is not None:
            if self.pair[0] not in PAIR_STATS or self.pair[1] not in FINAL:
                raise ValueError(f"unknown pairwise column {self.pair}")
            object.__setattr__(self, "pair_stat", self.pair[0])

    @property
    def attrs(self) -> dict[str, str]:
        """The labels of the output variable."""
        return {"long_name": self.long_name, "formula": self.formula, "reference": self.reference}

    @property
    def dims(self) -> tuple[str, ...]:
        """The dims of the output variable: ``()``, ``("class",)``, ``("frequency_bin",)`` or
        its own ``(dim,)``."""
        return (("class",) if self.per_class else ("frequency_bin",) if self.per_bin
                else (self.dim,) if self.dim else ())

    def evaluate(self, ins: Inputs) -> Any:
        """The lazy value of this metric for ``ins``."""
        if self.pair is not None:
            return ins.pair(*self.pair)
        return self.compute(ins)

    def undefined(self, K: int, D: int) -> str | None:
        """Why the metric is structurally undefined for K classes in D dims, or None."""
        if K < self.min_classes:
            return f"needs at least {self.min_classes} non-empty classes, got {K}"
        return None if self.defined is None else self.defined(K, D)


_G = "u_k = m~_k / (||m~_k|| + eps), over pairs i < j"
_ROWS = "O(K D) from the class statistics (and W)"
_GRAM = "from the class statistics: one Gram on the smaller of K and D, O(K D min(K, D))"
_NC1 = "from the class statistics: O(K D^2 + min(K, D)^3) (Sigma_W is D x D)"
_PAIRS = ("O(K^2 D) over class-tile pairs, in one fused graph with every pairwise metric "
          "asked for (no K x K array)")
_TEST = "one blocked pass over the test split, O(N_test K D): sample chunks x class tiles"
_W = ("weights",)
_MARGIN = ("in the NC4 pass over the test split, sharing the classifier GEMM: O(N_test K) more; "
           "per sample the true and the best other cosine, merged over class tiles")
_SPECTRUM = ("from the class statistics: Sigma_B^f folded over the class tiles, O(K D^2), and "
             "the eigenvalues of a D x D matrix, O(D^3)")

METRICS: dict[str, Metric] = {
    "nc1_pinv": Metric(
        "NC1 within-class variability (pseudo-inverse)",
        "tr(Sigma_B^+ Sigma_W) / K, torch.linalg.pinv cutoff D eps sigma_1",
        PAPYAN, within=True, compute=lambda ins: ins.nc1[0],
        value_range="[0, inf)", direction=-1, cost=_NC1),
    "nc1_svd": Metric(
        "NC1 within-class variability (top K-1 singular pairs)",
        "tr(Sigma_W U diag(s)^-1 U^T) / K, (U, s) the top K-1 singular "
        "pairs of Sigma_B; needs K-1 < D",
        HAN, within=True, compute=lambda ins: ins.nc1[1], defined=_svd_defined,
        value_range="[0, inf)", direction=-1, cost=_NC1),
    "nc1_quot": Metric(
        "NC1 trace quotient", "tr(Sigma_W) / tr(Sigma_B)", TIRER, within=True,
        compute=lambda ins: da.trace(ins.Sw) / (ins.M_sq / ins.K),
        value_range="[0, inf)", direction=-1, cost=_ROWS),
    "nc1_cdnv": Metric(
        "NC1 class-distance normalised variance",
        "mean over pairs i<j of ((v_i + v_j)/2) / ||mu_i - mu_j||^(2p)",
        GALANTI, within=True, pair=("cdnv", "mean"),
        value_range="[0, inf)", direction=-1, cost=_PAIRS),
    "nc2_etf_err": Metric(
        "NC2 simplex ETF error",
        "|| G/||G||_F - (I - 11^T/K)/sqrt(K-1) ||_F, G = M~ M~^T (closed form, no K x K matrix)",
        KOTHAPALLI, compute=lambda ins: CF.etf_error(ins.Mc, terms=ins.terms, pair="MM"),
        value_range="[0, sqrt(2)]", direction=-1, cost=_GRAM),
    "nc2_equinorm": Metric(
        "NC2 equinorm (coefficient of variation of ||m~_k||)",
        "std_k ||m~_k|| (unbiased) / mean_k ||m~_k||",
        PAPYAN, compute=lambda ins: _cv(ins.norms),
        value_range="[0, inf)", direction=-1, cost=_ROWS),
    "nc2_equiangle": Metric(
        "NC2 equiangularity",
        "std over pairs i<j of cos(m~_i, m~_j) (unbiased, divisor P-1)",
        PAPYAN, min_classes=3, pair_stat="cos",
        compute=lambda ins: da.sqrt(ins.pair("cos", "var") * ins.pair("cos", "n")
                                  / (ins.pair("cos", "n") - 1)),
        value_range="[0, sqrt(P/(P-1))], P pairs", direction=-1, cost=_PAIRS),
    "nc2_max_angle": Metric(
        "NC2 maximal-angle deviation", "mean over pairs i<j of |cos(m~_i, m~_j) + 1/(K-1)|",
        PAPYAN, pair=("cos_dev", "mean"),
        value_range="[0, K/(K-1)]", direction=-1, cost=_PAIRS),
    "nc2g_dist_mean": Metric(
        "GNC2 distance kernel, mean over pairs", f"mean ||u_i - u_j||, {_G}", LIU,
        pair=("dist", "mean"),
        value_range="[0, 2]", direction=None, cost=_PAIRS),
    "nc2g_dist_var": Metric(
        "GNC2 distance kernel, variance over pairs",
        f"(1/P) sum (||u_i - u_j|| - mean)^2, {_G}", LIU, pair=("dist", "var"),
        value_range="[0, 1]", direction=-1, cost=_PAIRS),
    "nc2g_log_mean": Metric(
        "GNC2 logarithmic kernel, mean over pairs", f"mean log(||u_i - u_j||^-1), {_G}", LIU,
        pair=("log", "mean"),
        value_range="[-log 2, inf)", direction=None, cost=_PAIRS),
    "nc2g_log_var": Metric(
        "GNC2 logarithmic kernel, variance over pairs",
        f"(1/P) sum (log(||u_i - u_j||^-1) - mean)^2, {_G}", LIU, pair=("log", "var"),
        value_range="[0, inf)", direction=-1, cost=_PAIRS),
    "nc2g_riesz_mean": Metric(
        "GNC2 Riesz kernel, mean over pairs",
        f"mean sign(S) ||u_i - u_j||^-S, S = D-2 by default, {_G}", LIU,
        pair=("riesz", "mean"),
        value_range="(-inf, inf); [2^-S, inf) for S > 0", direction=None, cost=_PAIRS),
    "nc2g_riesz_var": Metric(
        "GNC2 Riesz kernel, variance over pairs",
        f"(1/P) sum (sign(S) ||u_i - u_j||^-S - mean)^2, {_G}", LIU, pair=("riesz", "var"),
        value_range="[0, inf)", direction=-1, cost=_PAIRS),
    "nc2g_riesz_log_mean": Metric(
        "GNC2 Riesz kernel, log of |mean| (log domain)",
        "log |nc2g_riesz_mean|, accumulated in the log domain", LIU,
        pair=("riesz", "log_mean"),
        value_range="(-inf, inf)", direction=None, cost=_PAIRS),
    "nc2g_riesz_log_var": Metric(
        "GNC2 Riesz kernel, log of the variance (log domain)",
        "log nc2g_riesz_var, accumulated in the log domain", LIU, pair=("riesz", "log_var"),
        value_range="(-inf, inf)", direction=-1, cost=_PAIRS),
    "nc2w_etf_err": Metric(
        "NC2 simplex ETF error of the classifier", "nc2_etf_err with G = W W^T", ZHU,
        needs=_W, compute=lambda ins: CF.etf_error(ins.W, terms=ins.terms, pair="WW"),
        value_range="[0, sqrt(2)]", direction=-1, cost=_GRAM),
    "nc2w_equinorm": Metric(
        "NC2 equinorm of the classifier", "std_k ||w_k|| (unbiased) / mean_k ||w_k||",
        PAPYAN, needs=_W,
        compute=lambda ins: _cv(CF.row_norms(ins.W)),
        value_range="[0, inf)", direction=-1, cost=_ROWS),
    "nc2w_max_angle": Metric(
        "NC2 maximal-angle deviation of the classifier",
        "mean over pairs i<j of |cos(w_i, w_j) + 1/(K-1)|", PAPYAN, needs=_W,
        pair=("wcos_dev", "mean"),
        value_range="[0, K/(K-1)]", direction=-1, cost=_PAIRS),
    "nc3_dual_err": Metric(
        "NC3 self-duality error", "nc2_etf_err with G = W M~^T (closed form)", KOTHAPALLI,
        needs=_W, compute=lambda ins: CF.etf_error(ins.Mc, ins.W, terms=ins.terms, pair="MW"),
        value_range="[0, 2]", direction=-1, cost=_GRAM),
    "nc3u_uni_dual": Metric(
        "UNC3 uniform duality",
        "variance over classes (unbiased, divisor K-1) of w_k . m~_k", WU, needs=_W,
        compute=lambda ins: ins.sims.var(ddof=1),
        value_range="[0, inf)", direction=-1, cost=_ROWS),
    "nc3_papyan": Metric(
        "NC3 self-duality distance", "|| W/||W||_F - M~/||M~||_F ||_F^2", PAPYAN, needs=_W,
        compute=lambda ins: _sq(ins.W / da.sqrt((ins.W * ins.W).sum())
                              - ins.Mc / da.sqrt((ins.Mc * ins.Mc).sum())),
        value_range="[0, 4]", direction=-1, cost=_ROWS),
    "nc3_bias": Metric(
        "NC3 bias collapse", "|| W mu_G + b ||_2 with the sample-weighted mu_G", ZHU,
        needs=_W, min_classes=1, compute=_nc3_bias,
        value_range="[0, inf)", direction=-1, cost=_ROWS),
    "nc4_agree": Metric(
        "NC4 classifier / nearest-class-centre agreement",
        "fraction of samples with argmax_k (w_k . x + b_k) == argmin_k ||x - mu_k||",
        PAPYAN, needs=("weights", "test"), min_classes=1,
        compute=lambda ins: ins.agreement[0].sum() / ins.agreement[1].sum(),
        value_range="[0, 1]", direction=1, cost=_TEST),
    "margin_mean": Metric(
        "mean cosine margin of the test samples",
        "mean over test samples i of cos(x_i - mu_G, w_{y_i}) - max_{k != y_i} cos(x_i - mu_G, "
        "w_k), each norm clamped at 1e-8 (samples of classes not measured left out)",
        JIANG, needs=("weights", "test"), summary_var="margin_hist",
        compute=lambda ins: ins.margins[0],
        value_range="[-2, 2]", direction=1, cost=_MARGIN),
    "margin_hist": Metric(
        "histogram of the cosine margins of the test samples",
        "counts of the margins of margin_mean in 400 bins [lo, hi) of width 0.01 on [-2, 2] "
        "(the last closed, rounding past +-2 in the end bins); the q-quantile lies in the "
        "first bin whose cumulative count reaches q times the total",
        JIANG, needs=("weights", "test"), summary_var="margin_hist", dim="margin_bin",
        compute=lambda ins: ins.margins[1],
        value_range="counts in [0, N_test]", direction=None, cost=_MARGIN),
    "nc5_ood_dev": Metric(
        "NC5 ID/OOD orthogonality deviation",
        "(1/K) sum_k |cos(mu_k, mu_G^ood)|, uncentred mu_k", AMMAR, needs=("ood",),
        min_classes=1,
        compute=lambda ins: da.fabs(CF.cosine_rows(ins.M, _ood_mean(ins)[None, :])).mean(),
        value_range="[0, 1]", direction=-1, cost="one pass over the OOD split, O(N_ood D)"),
    "nc1_ood_class": Metric(
        "NC1 with the OOD set as an extra class",
        "nc1_pinv over K+1 classes: the OOD samples form class K+1 (its mean, its "
        "scatter pooled into Sigma_W, N grown by the OOD count, mu_G over K+1 means)",
        AMMAR + ", App. D", needs=("ood",), min_classes=1, within=True,
        compute=_nc1_ood_class,
        value_range="[0, inf)", direction=-1,
        cost="one pass over the OOD split with its scatter, O(N_ood D^2), then as nc1_pinv"),
    "nc0_w_sum": Metric(
        "NC0 classifier sum",
        "|| sum_k w_k ||_2 over the classes measured (0 for a simplex ETF classifier)",
        ZHU, needs=_W, min_classes=1, compute=_w_sum,
        value_range="[0, inf)", direction=-1, cost=_ROWS),
    "interference_mean": Metric(
        "interference: mean off-diagonal cosine of the centred class means",
        "mean over i != j of u_i . u_j = (||sum_k u_k||^2 - sum_k ||u_k||^2) / (K(K-1)), "
        f"{_G} (closed form, no pair visited)",
        KOTHAPALLI, compute=lambda ins: ins.interference[0],
        value_range="[-1/(K-1), 1]", direction=None, cost=_ROWS),
    "interference_var": Metric(
        "interference: variance of the off-diagonal cosines of the centred class means",
        "(||U^T U||_F^2 - sum_k ||u_k||^4) / (K(K-1)) - interference_mean^2 (divisor: the "
        "pairs), " + _G,
        KOTHAPALLI, compute=lambda ins: ins.interference[1],
        value_range="[0, 1]", direction=-1, cost=_GRAM),
    "erank_within": Metric(
        "effective rank of the within-class covariance",
        "exp(-sum_i p_i log p_i), p = lambda / sum lambda over the eigenvalues of Sigma_W",
        ROY, min_classes=1, within=True, compute=lambda ins: CF.effective_rank(ins.Sw),
        value_range="[1, D]", direction=None, cost="O(D^3): the eigenvalues of Sigma_W"),
    "erank_between": Metric(
        "effective rank of the between-class covariance",
        "exp(-sum_i p_i log p_i) over the eigenvalues of Sigma_B = M~^T M~ / K (from the "
        "K x K or D x D Gram, the smaller); min(K-1, D) under NC2",
        ROY, compute=lambda ins: CF.effective_rank(ins.gram_M),
        value_range="[1, min(K-1, D)]", direction=None, cost=_GRAM),
    "erank_w": Metric(
        "effective rank of the classifier",
        "exp(-sum_i p_i log p_i), p = sigma / sum sigma over the singular values of W "
        "(from the smaller Gram)",
        ROY, needs=_W, min_classes=1,
        compute=lambda ins: CF.effective_rank(
            ins.terms["WW"] if ins.terms is not None else CF.small_gram(ins.W), singular=True),
        value_range="[1, min(K, D)]", direction=None, cost=_GRAM),
    "vci": Metric(
        "variability collapse index",
        "1 - tr(Sigma_T^+ Sigma_B^f) / min(D, K-1), Sigma_T = Sigma_W + Sigma_B^f the total "
        "covariance, Sigma_B^f = sum_k (n_k/N)(mu_k - xbar)(mu_k - xbar)^T around the sample "
        "mean xbar; pinv cutoff D eps lambda_1",
        XU, within=True, compute=lambda ins: ins.spectra[0],
        value_range="[0, 1]", direction=-1, cost=_SPECTRUM),
    "alpha_req": Metric(
        "power-law decay of the total covariance spectrum",
        "-slope of the least-squares fit of log lambda_i on log i, lambda_1 >= lambda_2 >= ... "
        "the eigenvalues of Sigma_T above D eps lambda_1 (NaN with fewer than two)",
        AGRAWAL, min_classes=1, within=True, compute=lambda ins: ins.spectra[1],
        value_range="[0, inf)", direction=None, cost=_SPECTRUM),
    "rankme": Metric(
        "RankMe smooth rank of the embeddings",
        "exp(-sum_k p_k log p_k), p_k = sigma_k / sum sigma + 1e-7 over the min(N, D) singular "
        "values of the raw (uncentred) embeddings, sigma_k = sqrt(N mu_k), mu the eigenvalues "
        "of the second moment Sigma_T + xbar xbar^T (those under D eps mu_1 count as 0)",
        GARRIDO, min_classes=1, within=True, compute=lambda ins: ins.spectra[2],
        value_range="[1, min(N, D)], up to the 1e-7 added to each p_k", direction=None,
        cost=_SPECTRUM),
    # head / tail breakdown (measure(..., by_frequency=n_bins))
    "nc1_cdnv_by_frequency": Metric(
        "NC1 CDNV within each class-count bin",
        "nc1_cdnv over the pairs of classes of one bin (bins: the classes ranked by count, "
        "cut into n_bins groups of near-equal size, most frequent first)",
        WU, needs=("by_frequency",), per_bin=True, within=True,
        compute=lambda ins: ins.per_bin(lambda idx: _cdnv_of(ins, idx), within=True),
        value_range="[0, inf)", direction=-1,
        cost="O(K^2 D / n_bins): the class-tile pairs within each bin"),
    "nc1_quot_by_frequency": Metric(
        "NC1 trace quotient: each class-count bin's share",
        "sum_{k in bin} (n_k/N) v_k / tr(Sigma_B); the shares add up to nc1_quot",
        TIRER, needs=("by_frequency",), per_bin=True, within=True,
        compute=lambda ins: ins.per_bin(lambda idx: _quot_share(ins, idx), within=True),
        value_range="[0, inf)", direction=-1, cost=_ROWS),
    "nc1_pinv_by_frequency": Metric(
        "NC1 pseudo-inverse: each class-count bin's share",
        "sum_{k in bin} sum_{y_i=k} (x_i - mu_k)^T Sigma_B^+ (x_i - mu_k) / (N K), one pass "
        "over the training samples (as sums about the global mean less the means' part); the "
        "shares add up to nc1_pinv. A bin whose sums about the global mean exceed its share "
        "1e9-fold is beyond float64: NaN, with a warning",
        PAPYAN, needs=("by_frequency", "train"), per_bin=True, within=True,
        compute=_pinv_shares,
        value_range="[0, inf)", direction=-1,
        cost="one more blocked pass over the training samples, O(N D min(K, D))"),
    "nc4_agree_by_frequency": Metric(
        "NC4 agreement within each class-count bin",
        "nc4_agree over the test samples whose true class lies in the bin",
        PAPYAN, needs=("weights", "test", "by_frequency"), per_bin=True, min_classes=1,
        compute=lambda ins: ins.per_bin(lambda idx: _agree_of(ins, idx)),
        value_range="[0, 1]", direction=1, cost=_TEST),
    "cos_mean_by_frequency": Metric(
        "minority collapse: mean cosine between the centred class means of each "
        "class-count bin",
        "mean over i != j in the bin of u_i . u_j = (||sum_{k in bin} u_k||^2 - C) / (C(C-1)), "
        "C classes in the bin (NaN if C < 2), u_k = m~_k / (||m~_k|| + eps), m~_k = mu_k - "
        "mu_G centred on the global mean of NC2 (closed form, no pair visited)",
        FANG, needs=("by_frequency",), per_bin=True,
        compute=lambda ins: ins.per_bin(partial(_cos_mean_of, CF.normalized(ins.Mc))),
        value_range="[-1/(C-1), 1]", direction=None,
        cost="O(K D) from the class statistics: one sum of unit means per bin"),
    # per-class companions
    "mean_norms": Metric(
        "norm of the centred class mean", "||m~_k|| = ||mu_k - mu_G||", PAPYAN,
        per_class=True, min_classes=1, compute=lambda ins: ins.norms,
        value_range="[0, inf)", direction=None, cost=_ROWS),
    "similarities": Metric(
        "classifier / centred-mean similarity", "w_k . m~_k", WU, needs=_W, per_class=True,
        min_classes=1, compute=lambda ins: ins.sims,
        value_range="(-inf, inf)", direction=None, cost=_ROWS),
    "similarities_cos": Metric(
        "classifier / centred-mean cosine similarity",
        "w_k . m~_k / (max(||w_k||, 1e-8) max(||m~_k||, 1e-8)), as torch", WU, needs=_W,
        per_class=True, min_classes=1, compute=lambda ins: CF.cosine_rows(ins.W, ins.Mc),
        value_range="[-1, 1]", direction=1, cost=_ROWS),
    "distance_norms": Metric(
        "classifier / centred-mean distance after normalising",
        "|| w_k/(||w_k||+eps) - m~_k/(||m~_k||+eps) ||", PAPYAN, needs=_W, per_class=True,
        min_classes=1,
        compute=lambda ins: CF.row_norms(CF.normalized(ins.W) - CF.normalized(ins.Mc)),
        value_range="[0, 2]", direction=-1, cost=_ROWS),
    "agree_per_class": Metric(
        "NC4 agreement per true class", "nc4_agree over the samples of true class k", PAPYAN,
        needs=("weights", "test"), per_class=True, min_classes=1, compute=lambda ins: _per_class(
            ins.agreement[0][ins.kept.present], ins.agreement[1][ins.kept.present]),
        value_range="[0, 1]", direction=1, cost=_TEST),

}


def _cv(x: da.Array) -> da.Array:
    """Coefficient of variation with the unbiased standard deviation (the equinorms)."""
    return x.std(ddof=1) / x.mean()


def _sq(A: da.Array) -> da.Array:
    return (A * A).sum()


def _per_class(h: da.Array, c: da.Array) -> da.Array:
    return da.where(c > 0, h / da.maximum(c, 1), np.nan)


_NC2G = ("nc2g_dist_mean", "nc2g_dist_var", "nc2g_log_mean", "nc2g_log_var",
         "nc2g_riesz_mean", "nc2g_riesz_var", "nc2g_riesz_log_mean", "nc2g_riesz_log_var")

#: Selection names that stand for several variables (``--metrics nc1`` on the CLI).
GROUPS: dict[str, tuple[str, ...]] = {
    "nc0": ("nc0_w_sum",),
    "nc1": ("nc1_pinv", "nc1_svd", "nc1_quot", "nc1_cdnv", "nc1_ood_class"),
    "nc2": ("nc2_etf_err", "nc2_equinorm", "nc2_equiangle", "nc2_max_angle", "mean_norms"),
    "nc2g": _NC2G,
    "nc2g_dist": _NC2G[0:2],
    "nc2g_log": _NC2G[2:4],
    "nc2g_riesz": _NC2G[4:8],
    "nc2w": ("nc2w_etf_err", "nc2w_equinorm", "nc2w_max_angle"),
    "nc3": ("nc3_dual_err", "nc3u_uni_dual", "nc3_papyan", "nc3_bias", "similarities",
            "similarities_cos", "distance_norms"),
    "nc4": ("nc4_agree", "agree_per_class"),
    "nc5": ("nc5_ood_dev",),
    "margins": ("margin_mean", "margin_hist"),
    "interference": ("interference_mean", "interference_var"),
    "erank": ("erank_within", "erank_between", "erank_w"),
    "spectra": ("vci", "alpha_req", "rankme"),
    "by_frequency": ("nc1_cdnv_by_frequency", "nc1_quot_by_frequency",
                     "nc1_pinv_by_frequency", "nc4_agree_by_frequency",
                     "cos_mean_by_frequency"),
    "cos_mean": ("cos_mean_by_frequency",),  # minority collapse (with by_frequency=)
}

#: Metrics computed only when asked for through their own input (``by_frequency=``).
ON_REQUEST = frozenset(GROUPS["by_frequency"])


def dim_coords(dim: str) -> dict[str, Any]:
    """The coordinates of a metric's own dim: for ``margin_bin`` the bins' centres and their
    edges ``margin_lo``, ``margin_hi`` (a quantile: the ``margin_hi`` of the first bin whose
    cumulative count reaches q times the total bounds it from above, within 0.01)."""
    e = MARGIN_EDGES
    return {"margin_bin": (e[:-1] + e[1:]) / 2, "margin_lo": ("margin_bin", e[:-1]),
            "margin_hi": ("margin_bin", e[1:])}


def evaluate(name: str, **arrays: Any) -> da.Array:
    """The lazy value of the declaration ``name`` on rows taken as given
    (:meth:`Inputs.from_arrays`): how :mod:`ncdask.compat` computes, no formula twice."""
    return METRICS[name].evaluate(Inputs.from_arrays(todo=(name,), **arrays))


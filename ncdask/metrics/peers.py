"""Standalone functions for the metrics other Neural Collapse codebases report.

Each is a :func:`ncdask.measure` variable (:data:`PEERS`) from its declaration: rows as given
(drop empty classes first), any array kind in, a float64 ``float`` out, no K×K matrix.

>>> import numpy as np
>>> from ncdask.metrics import peers
>>> W = np.eye(4) - 0.25  # a simplex ETF
>>> round(peers.classifier_etf_error(W), 6), round(peers.classifier_max_angle(W), 12)
(0.0, 0.0)
>>> peers.classifier_equinorm(np.array([[1.0, 0.0], [0.0, 3.0]]))
0.7071067811865476
>>> peers.bias_collapse(np.eye(2), np.array([3.0, 0.0]), np.array([0.0, 4.0]))
5.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import xarray as xr

from ncdask.metrics.api import measure
from ncdask.metrics.declarations import METRICS, evaluate
from ncdask.metrics.inputs import class_rows, computed_float, shaped

#: Function name: (``measure`` variable, parameters with defaults).
_TABLE = {
    "classifier_etf_error": ("nc2w_etf_err", {"W": inspect.Parameter.empty}),
    "classifier_equinorm": ("nc2w_equinorm", {"W": inspect.Parameter.empty}),
    "classifier_max_angle": ("nc2w_max_angle", {"W": inspect.Parameter.empty,
                                                "tile_size": None}),
    "self_duality_distance": ("nc3_papyan", {"W": inspect.Parameter.empty,
                                             "M": inspect.Parameter.empty, "m_G": 0}),
    "bias_collapse": ("nc3_bias", {"W": inspect.Parameter.empty, "b": None, "m_G": 0}),
}
#: Every peer function and the ``measure`` variable it computes.
PEERS = {name: metric for name, (metric, _) in _TABLE.items()}
PEERS["ood_class_variability"] = "nc1_ood_class"

_DOC = {
    "W": "W : array (K, D)\n    Classifier weights, one row per class.",
    "tile_size": "tile_size : int, optional\n    Classes per tile.",
    "M": "M : array (K, D)\n    Class means, centred on ``m_G``.",
    "b": "b : array (K,), optional\n    Classifier bias (0 if not given).",
    "m_G": "m_G : array (D,) or 0\n    The global mean (for ``bias_collapse`` the "
           "sample-weighted one, ``Σ_k n_k μ_k / N``).",
}


def _arrays(name: str, W: Any, M: Any = None, b: Any = None, m_G: Any = 0,
            **tile: Any) -> dict[str, Any]:
    """The declaration's inputs from a peer function's arguments, checked."""
    Wd, T = class_rows(W, tile.get("tile_size"), "W")
    K, D = Wd.shape
    if name.startswith("classifier_") and K < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {K}")
    out: dict[str, Any] = {"W": Wd, **({"tile_size": T} if tile else {})}  # as given, else K
    zero = isinstance(m_G, (int, float)) and m_G == 0
    g = None if zero else shaped(m_G, (D,), "m_G").rechunk(-1)
    if b is not None:
        out["b"] = shaped(b, (K,), "b").rechunk((Wd.chunks[0],))
    if M is None:
        return {**out, "mu_weighted": g} if name == "bias_collapse" else out
    Mc, _ = class_rows(M, name="M")
    if Mc.shape != Wd.shape:
        raise ValueError(f"W has shape {Wd.shape} but M has shape {Mc.shape}")
    return {**out, "M": (Mc if g is None else Mc - g[None, :]).rechunk(Wd.chunks)}


def _peer(name: str) -> Callable[..., float]:
    """The function ``name`` of :data:`_TABLE`, documented from its declaration."""
    metric, params = _TABLE[name]
    m = METRICS[metric]
    sig = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
         for p, d in params.items()], return_annotation=float)

    def peer(*args: Any, **kwargs: Any) -> float:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return computed_float(evaluate(metric, **_arrays(name, **bound.arguments)))

    peer.__name__ = peer.__qualname__ = name
    peer.__signature__ = sig
    doc = "\n".join(_DOC[p] for p in params).replace("\n", "\n    ")
    peer.__doc__ = (f"{m.long_name} (``measure``'s ``{metric}``).\n\n    ``{m.formula}``\n\n"
                    f"    Parameters\n    ----------\n    {doc}\n\n    Returns\n    -------\n"
                    f"    float\n\n    References\n    ----------\n    {m.reference}.\n")
    return peer


classifier_etf_error = _peer("classifier_etf_error")
classifier_equinorm = _peer("classifier_equinorm")
classifier_max_angle = _peer("classifier_max_angle")
self_duality_distance = _peer("self_duality_distance")
bias_collapse = _peer("bias_collapse")


def ood_class_variability(stats: xr.Dataset, ood: Any, *, min_count: int | None = None,
                          ignore_index: int | None = None,
                          split_every: int | None = None) -> float:
    """NC1 with the OOD set added as class K+1 (``measure``'s ``nc1_ood_class``).

    Parameters
    ----------
    stats : xarray.Dataset
        Class statistics of the ID training split.
    ood : split Dataset or (store, split)
        The OOD samples (of their labels only ``ignore_index`` is used).
    min_count, ignore_index, split_every : optional
        As in :func:`ncdask.measure`.

    Returns
    -------
    float
    """
    res = measure(stats, ood=ood, metrics=["nc1_ood_class"], min_count=min_count,
                  ignore_index=ignore_index, split_every=split_every)
    if "nc1_ood_class" not in res:
        raise ValueError(f"nc1_ood_class is undefined here: {res.attrs['left_out']}")
    return float(res["nc1_ood_class"].values)


__all__ = list(PEERS)

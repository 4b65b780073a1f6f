"""The law of equi-separation: how a network separates classes layer by layer."""

from __future__ import annotations

import numpy as np
import xarray as xr

HE_SU = ("He & Su (2023), A law of data separation in deep learning, PNAS 120(36), "
         "arXiv:2210.17020")
FORMULA = "D_l = tr(Sigma_W Sigma_B^+) = K nc1_pinv; log D_l = a + l log rho (least squares)"


def equiseparation(result: xr.Dataset, dim: str = "layer") -> xr.Dataset:
    """The separation fuzziness of each layer and its geometric decay ratio across layers.

    He & Su's law: the fuzziness ``D_l = tr(Σ_W Σ_B⁺)`` of layer ``l`` falls geometrically,
    ``D_l ≈ D_0 ρ^l``; a fit with R² near 1 means every layer improves separation by the
    same factor ρ. ``D_l`` is ``K · nc1_pinv`` of the layer's sweep (K the classes measured).

    Parameters
    ----------
    result : xarray.Dataset
        A sweep over layers that measured ``nc1_pinv`` (:func:`ncdask.sweep` with
        ``over="layer"``, :func:`ncdask.analyze` with ``sweep="layer"``), layers in model order;
        other dims (``epoch``) give one fit each. Lazy in, lazy out.
    dim : str, default "layer"
        The dim of the layers; their depth ``l`` is their position along it (0, 1, ...).

    Returns
    -------
    xarray.Dataset
        ``fuzziness`` (``D_l``), ``rho`` (ρ), ``intercept`` (``a``, natural log) and
        ``r2`` (R² of the fit of ``log D_l``; NaN if ``D_l`` is constant), with the ``depth``
        coordinate. A layer with ``D_l`` NaN or ≤ 0 makes its fit NaN.

    References
    ----------
    He & Su (2023), A law of data separation in deep learning, PNAS 120(36), arXiv:2210.17020.

    Examples
    --------
    >>> import numpy as np, xarray as xr, ncdask
    >>> sweep = xr.Dataset({"nc1_pinv": ("layer", 2.0 * 0.5 ** np.arange(4))},
    ...                    coords={"layer": ["a", "b", "c", "d"]}, attrs={"n_classes": 10})
    >>> fit = ncdask.equiseparation(sweep)
    >>> round(float(fit.rho), 6), round(float(fit.r2), 6), fit.fuzziness.values.tolist()
    (0.5, 1.0, [20.0, 10.0, 5.0, 2.5])
    """
    if "nc1_pinv" not in result:
        raise ValueError(
            "equiseparation needs nc1_pinv (D_l = K nc1_pinv): measure it, e.g. "
            f"ncdask.sweep(store, over={dim!r}, metrics=['nc1_pinv', ...]); "
            f"the result has {sorted(map(str, result.data_vars))}")
    nc1 = result["nc1_pinv"]
    if dim not in nc1.dims or nc1.sizes[dim] < 2:
        raise ValueError(f"equiseparation fits across at least 2 entries of dim {dim!r}; "
                         f"nc1_pinv has dims {dict(nc1.sizes)}")
    D = (_classes(result, nc1, dim) * nc1).rename("fuzziness")
    logd = np.log(D.where(D > 0))
    depth = xr.DataArray(np.arange(nc1.sizes[dim], dtype=np.float64), dims=dim)
    lc, yc = depth - depth.mean(), logd - logd.mean(dim)
    slope = (lc * yc).sum(dim, skipna=False) / (lc * lc).sum()
    intercept = logd.mean(dim, skipna=False) - slope * depth.mean()
    ss_res = ((logd - intercept - slope * depth) ** 2).sum(dim, skipna=False)
    ss_tot = (yc * yc).sum(dim, skipna=False)
    r2 = (1 - ss_res / ss_tot.where(ss_tot > 0))
    D.attrs = {"long_name": "separation fuzziness tr(Sigma_W Sigma_B^+)"}
    out = xr.Dataset({"fuzziness": D, "rho": np.exp(slope), "intercept": intercept, "r2": r2})
    out = out.assign_coords(depth=depth)
    out["rho"].attrs = {"long_name": "decay ratio rho of D_l per layer"}
    out["r2"].attrs = {"long_name": "R^2 of the fit of log D_l on depth"}
    keep = {k: result.attrs[k] for k in ("store", "split", "epoch") if k in result.attrs}
    out.attrs = {**keep, "dim": dim, "formula": FORMULA, "reference": HE_SU}
    return out


def _classes(result: xr.Dataset, nc1: xr.DataArray, dim: str) -> float | xr.DataArray:
    """K, the classes each layer was measured with (``n_classes_measured``, per set)."""
    K = result.attrs.get("n_classes_measured", result.attrs.get("n_classes"))
    if K is None:
        raise ValueError("equiseparation needs the number of classes: the result has no "
                         "n_classes_measured or n_classes attribute (measure with ncdask)")
    ks = np.atleast_1d(np.asarray(K, dtype=np.float64))
    if np.all(ks == ks[0]):
        return float(ks[0])
    if nc1.ndim == 1 and ks.size == nc1.size:
        return xr.DataArray(ks, dims=dim)
    raise ValueError(f"the layers were measured with different numbers of classes {ks.tolist()}"
                     f"; measure them with the same classes (min_count=)")

"""Persisting measured results: :func:`save_results` and :func:`open_results`."""

from __future__ import annotations

import xarray as xr

from ncdask.store.zarrio import open_dataset, write_dataset


def save_results(results: xr.Dataset, url: str, *, overwrite: bool = False,
                 storage_options: dict | None = None) -> None:
    """Write the output of :func:`ncdask.measure` or :func:`ncdask.sweep` to Zarr.

    Lazy results are computed as they are written, beside ``url`` and renamed into place when
    complete; attrs that are None are left out (Zarr attrs are JSON).

    Parameters
    ----------
    results : xarray.Dataset
    url : str
        Local path or fsspec URL (``storage_options`` go to fsspec).
    overwrite : bool, default False
        Replace ``url`` if it holds ncdask results (else ``FileExistsError``).
    storage_options : dict, optional
    """
    out = results.copy()
    out.attrs = {k: v for k, v in results.attrs.items() if v is not None}
    if "left_out" in results.attrs:
        out.attrs["left_out"] = dict(results.attrs.get("left_out") or {})
    write_dataset(out, url, kind="results", overwrite=overwrite,
                  storage_options=storage_options)


def open_results(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Reopen results written by :func:`save_results`, lazily, variables in SPEC order.

    Parameters
    ----------
    url : str
    storage_options : dict, optional

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import numpy as np, xarray as xr, ncdask
    >>> res = xr.Dataset({"nc2_etf_err": ((), 0.5), "nc1_pinv": ((), 0.1)})
    >>> ncdask.save_results(res, "memory://results-doc.zarr")
    >>> back = ncdask.open_results("memory://results-doc.zarr")
    >>> list(back.data_vars), back.nc1_pinv.attrs["long_name"][:3]
    (['nc1_pinv', 'nc2_etf_err'], 'NC1')
    """
    from ncdask.metrics.api import label_results

    ds = open_dataset(url, storage_options=storage_options)
    return label_results(ds)

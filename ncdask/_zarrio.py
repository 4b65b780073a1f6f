"""Writing and reopening ncdask's own Zarr outputs (statistics, results).

Outputs are written with consolidated metadata so that a plain
``xr.open_zarr(path)`` opens them without the "Failed to open Zarr store
with consolidated metadata" RuntimeWarning (measured: zarr 3.1, xarray
2026.9). Zarr v3 does not specify consolidated metadata yet and warns
(``ZarrUserWarning``) when writing it; that warning is about the format,
not the data, so it is silenced here and nowhere else.

Zarr lists a group's arrays alphabetically, so the variables' order is kept
in the ``ncdask_variables`` attribute and restored by :func:`open_dataset`.
"""

from __future__ import annotations

import warnings
from typing import Any

import xarray as xr

ORDER_ATTR = "ncdask_variables"


def write_dataset(ds: xr.Dataset, url: str, *, storage_options: dict | None = None) -> None:
    """Write ``ds`` to a new Zarr store at ``url`` (replacing it), with consolidated metadata.

    Parameters
    ----------
    ds : xarray.Dataset
        Lazy variables are computed chunk by chunk as they are written.
    url : str
        Local path or fsspec URL.
    storage_options : dict, optional
        Passed to fsspec.
    """
    out = ds.copy()
    out.attrs = dict(ds.attrs)
    out.attrs[ORDER_ATTR] = [str(n) for n in ds.data_vars]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        out.to_zarr(url, mode="w", consolidated=True, storage_options=storage_options)


def open_dataset(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open a store written by :func:`write_dataset` lazily, variables in their written order.

    Stores without consolidated metadata (written by older ncdask) open too.

    Parameters
    ----------
    url : str
    storage_options : dict, optional

    Returns
    -------
    xarray.Dataset
    """
    kw: dict[str, Any] = {"storage_options": storage_options}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        try:
            ds = xr.open_zarr(url, consolidated=True, **kw)
        except (KeyError, ValueError, FileNotFoundError) as e:
            if isinstance(e, FileNotFoundError) and not _exists(url, storage_options):
                raise
            ds = xr.open_zarr(url, consolidated=False, **kw)
    order = ds.attrs.pop(ORDER_ATTR, None)
    if order:
        names = [n for n in order if n in ds.data_vars]
        names += [n for n in ds.data_vars if n not in names]
        attrs = dict(ds.attrs)
        ds = ds[names]
        ds.attrs = attrs
    return ds


def _exists(url: str, storage_options: dict | None) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return bool(fs.exists(path))

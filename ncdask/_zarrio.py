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

import os
import uuid
import warnings
from typing import Any

import xarray as xr

ORDER_ATTR = "ncdask_variables"
KIND_ATTR = "ncdask_output"


def rename(fs: Any, src: str, dst: str) -> None:
    """Rename a directory: ``os.rename`` (atomic) on a local disk, else ``fs.mv``."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if proto in ("file", "local"):
        os.rename(src, dst)
    else:
        fs.mv(src, dst, recursive=True)


def _replaceable(url: str, kind: str, storage_options: dict | None) -> str | None:
    """Why the existing path ``url`` must not be replaced by ``kind`` output (None: it may)."""
    import zarr

    try:
        g = zarr.open_group(url, mode="r", storage_options=storage_options)
    except Exception:  # a file, a plain folder, anything that is not a Zarr group
        return "it is not a Zarr store that ncdask wrote"
    attrs = dict(g.attrs)
    if "ncdask" in attrs:
        return "it is an ncdask embedding store"
    have = attrs.get(KIND_ATTR)
    if have is None:  # written before outputs were marked: any ncdask output
        return None if "ncdask_version" in attrs else "it is not a Zarr store that ncdask wrote"
    return None if have == kind else f"it holds ncdask {have}, not {kind}"


def check_output(
    url: str, kind: str, *, overwrite: bool = False, storage_options: dict | None = None
) -> tuple[Any, str]:
    """Raise ``FileExistsError`` unless ``url`` is free or may be replaced by ``kind`` output.

    It may when it holds ncdask ``kind`` output and ``overwrite`` is true.

    Returns the fsspec filesystem and path of ``url``. Called before a long
    compute whose result goes to ``url``, and again by :func:`write_dataset`.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    path = path.rstrip("/")
    if fs.exists(path):
        why = _replaceable(url, kind, storage_options)
        if why is not None:
            raise FileExistsError(f"{url!r} exists and {why}; refusing to replace it "
                                  "(choose another path, or remove it yourself)")
        if not overwrite:
            raise FileExistsError(f"{url!r} already holds ncdask {kind}; pass "
                                  "overwrite=True (CLI: --overwrite) to replace it")
    return fs, path


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Blosc LZ4 with byte shuffle for every float variable.

    Why not Zarr's default (Zstd): statistics are float64 means of noisy
    data that barely compress, and Zstd wrote them at half the speed. One
    64 MiB chunk of float64 means (a third of the rows NaN, as for the empty
    classes of a vocabulary), written and read on the 2-core machine: Zstd
    (default) 0.39 s / 0.35 s, ratio 0.64; LZ4 + byte shuffle 0.20 s /
    0.18 s, ratio 0.64; no compression 0.10 s / 0.16 s, ratio 1.0.
    """
    from zarr.codecs import BloscCodec

    return {str(k): {"compressors": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle",
                                                typesize=v.dtype.itemsize)]}
            for k, v in ds.data_vars.items() if v.dtype.kind == "f"}


def write_dataset(
    ds: xr.Dataset, url: str, *, kind: str, overwrite: bool = False,
    storage_options: dict | None = None,
) -> None:
    """Write ``ds`` as a Zarr store at ``url``, with consolidated metadata, replacing safely.

    The store is written beside ``url`` first and renamed into place when
    complete (an atomic rename on a local disk), so an interrupted write
    leaves what was at ``url`` untouched, and ``ds`` may be read lazily from
    ``url`` itself (``save_stats(load_stats(p), p, overwrite=True)``). An
    existing ``url`` is replaced only with ``overwrite`` and when it holds
    ncdask output of the same ``kind``: a folder with other files, an
    embedding store or other output is refused either way.

    Parameters
    ----------
    ds : xarray.Dataset
        Lazy variables are computed chunk by chunk as they are written.
    url : str
        Local path or fsspec URL.
    kind : {"stats", "results"}
        What the store holds; recorded, and checked before replacing.
    overwrite : bool
        Replace an existing ``url`` that holds ``kind`` output.
    storage_options : dict, optional
        Passed to fsspec.

    Raises
    ------
    FileExistsError
        ``url`` exists and is not ncdask ``kind`` output, or is and
        ``overwrite`` is false (nothing is written).
    """
    fs, path = check_output(url, kind, overwrite=overwrite, storage_options=storage_options)
    out = ds.copy()
    out.attrs = dict(ds.attrs)
    out.attrs[ORDER_ATTR] = [str(n) for n in ds.data_vars]
    out.attrs[KIND_ATTR] = kind
    tag = uuid.uuid4().hex[:12]
    tmp, old = f"{path}.ncdask-tmp-{tag}", f"{path}.ncdask-old-{tag}"
    tmp_url = url.rstrip("/") + f".ncdask-tmp-{tag}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            out.to_zarr(tmp_url, mode="w-", consolidated=True, storage_options=storage_options,
                        encoding=_encoding(out))
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        raise
    replaced = fs.exists(path)
    try:
        if replaced:
            rename(fs, path, old)
        rename(fs, tmp, path)
    except BaseException:  # e.g. another writer put its store there first
        if replaced and not fs.exists(path) and fs.exists(old):
            rename(fs, old, path)
        fs.rm(tmp, recursive=True)
        raise
    if replaced:
        fs.rm(old, recursive=True)


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
    ds.attrs.pop(KIND_ATTR, None)
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

"""Dask graph construction from the per-chunk kernels (public dask API only)."""

from ncdask.graph._blas import install as _install_blas_callback

_install_blas_callback()

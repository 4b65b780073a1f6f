"""Dask graph construction from the per-chunk kernels (public dask API only)."""

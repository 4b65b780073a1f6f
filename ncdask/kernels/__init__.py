"""Per-chunk array kernels: array module from their inputs (NumPy, CuPy); no dask, no xarray."""

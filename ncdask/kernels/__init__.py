"""Per-chunk array kernels.

Everything here takes its array module from its inputs (NumPy or CuPy) and
imports neither dask nor xarray.
"""

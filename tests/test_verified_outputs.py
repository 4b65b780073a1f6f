"""Cache entries and outputs carry digests of their chunks: a damaged cache entry is
recomputed, a damaged output refused, and ``ncdask check`` finds both."""

import json
import pathlib

import numpy as np
import pytest
import xarray as xr
from dense import assert_stats_equal, class_data
from test_s3 import s3  # noqa: F401  (the moto server fixture)

import ncdask
from ncdask.cli import main
from ncdask.stats.cache import DamagedCacheWarning
from ncdask.store import zarrio
from ncdask.store.zarrio import DamagedOutputError

K, D = 5, 8


def _store(tmp_path):
    rng = np.random.default_rng(0)
    means = 3 * rng.normal(size=(K, D))
    s = ncdask.EmbeddingStore.from_arrays(
        str(tmp_path / "s.zarr"), {"train": class_data(rng, means, 600)},
        W=means, b=np.zeros(K), chunk_rows=100)
    return s


def _entry(s):
    """The one statistics-cache entry of the train split."""
    (entry,) = pathlib.Path(s.url).rglob(".ncdask-stats/k-*")
    return entry


def _chunk(root, var):
    (f,) = [p for p in (pathlib.Path(root) / var).rglob("*") if p.is_file()
            and p.name != "zarr.json"][:1]
    return f


def _flip(f):
    """One bit of a stored (compressed) chunk file flipped, as a disk might."""
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x10
    f.write_bytes(bytes(b))


def _damage(f, how):
    _flip(f) if how == "flip" else f.unlink()


@pytest.mark.parametrize("how,var", [("flip", "within_cov"), ("delete", "means")])
def test_a_damaged_cache_entry_is_reported_and_recomputed(tmp_path, how, var):
    s = _store(tmp_path)
    want = ncdask.class_stats(s, "train").compute()
    ncdask.class_stats(s, "train", cache=True)
    entry = _entry(s)
    _damage(_chunk(entry, var), how)
    r = ncdask.check_store(s.url)
    assert not r.ok and len(r.problems) == 1
    assert "statistics cache entry" in r.problems[0] and entry.name in r.problems[0]
    assert f"variable {var!r}, chunk (0" in r.problems[0]
    with pytest.warns(DamagedCacheWarning, match=entry.name):
        got = ncdask.class_stats(ncdask.EmbeddingStore.open(s.url), "train", cache=True)
    assert_stats_equal(got.compute(), want)
    assert not entry.exists() and _entry(s) != entry  # replaced by a sound entry
    assert ncdask.check_store(s.url).ok


def test_a_hit_is_checked_as_it_is_read(tmp_path):
    """A chunk lost after the hit was returned (lazily) is an error, not a NaN."""
    s = _store(tmp_path)
    ncdask.class_stats(s, "train", cache=True)
    hit = ncdask.class_stats(ncdask.EmbeddingStore.open(s.url), "train", cache=True)
    _chunk(_entry(s), "means").unlink()
    with pytest.raises(DamagedOutputError, match="variable 'means', chunk"):
        hit.compute()


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_a_damaged_stats_output_is_refused(tmp_path, capsys, how):
    s = _store(tmp_path)
    url = str(tmp_path / "st.zarr")
    ncdask.save_stats(ncdask.class_stats(s, "train"), url)
    assert main(["check", url]) == 0
    assert "st.zarr: ok: 9 chunks verified" in \
        capsys.readouterr().out
    _damage(_chunk(url, "within_cov"), how)
    with pytest.raises(DamagedOutputError, match=r"st\.zarr.*variable 'within_cov', chunk"):
        ncdask.load_stats(url).compute()
    with pytest.raises(DamagedOutputError):
        ncdask.measure(ncdask.load_stats(url), metrics=["nc1_pinv"]).compute()
    assert main(["check", url]) == 1
    out = capsys.readouterr().out
    assert "problem: " in out and "'within_cov', chunk (0, 0)" in out
    assert ncdask.check_store(url).problems


def test_a_damaged_results_output_is_refused(tmp_path):
    url = str(tmp_path / "res.zarr")
    ncdask.save_results(xr.Dataset({"nc1_pinv": ((), 0.25), "nc2_etf_err": ((), 0.5)}), url)
    assert ncdask.open_results(url).nc1_pinv.item() == 0.25
    _chunk(url, "nc1_pinv").unlink()
    with pytest.raises(DamagedOutputError, match="variable 'nc1_pinv'"):
        ncdask.open_results(url).compute()


def test_cli_analyze_with_a_damaged_cache_gives_the_uncached_numbers(tmp_path, capsys):
    s = _store(tmp_path)
    argv = ["analyze", s.url, "--metrics", "nc1", "nc3", "--json", "-", "-q"]
    assert main([*argv, "--no-cache"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert main(argv) == 0  # fills the cache
    assert json.loads(capsys.readouterr().out) == pytest.approx(want, rel=1e-12)
    _flip(_chunk(_entry(s), "within_cov"))
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == pytest.approx(want, rel=1e-12)
    assert "statistics cache entry" in err and "recomputing it" in err


def _as_before(url, storage_options):
    """What the previous ncdask wrote: consolidated metadata, no digests."""
    zarrio.zarr.consolidate_metadata(url)


def test_outputs_and_entries_without_digests_open_as_before(tmp_path, monkeypatch):
    s = _store(tmp_path)
    st = ncdask.class_stats(s, "train").compute()
    url = str(tmp_path / "old.zarr")
    with monkeypatch.context() as m:
        m.setattr(zarrio, "_seal", _as_before)
        ncdask.save_stats(st, url)
        ncdask.class_stats(s, "train", cache=True)
    assert zarrio.DIGEST_ATTR not in json.loads((pathlib.Path(url) / "zarr.json").read_text())[
        "attributes"]
    assert_stats_equal(ncdask.load_stats(url).compute(), st)
    r = ncdask.check_store(url)
    assert r.ok and "without checksums" in r.notes[0]
    old = _entry(s)
    _flip(_chunk(old, "within_cov"))  # cannot be verified, so it is not used
    with np.errstate(all="ignore"):
        got = ncdask.class_stats(ncdask.EmbeddingStore.open(s.url), "train", cache=True)
    assert_stats_equal(got.compute(), st)


def test_on_s3_a_damaged_entry_is_reported_and_recomputed(s3):  # noqa: F811
    import s3fs

    opts, bucket = s3
    url = f"s3://{bucket}/verified.zarr"
    rng = np.random.default_rng(0)
    s = ncdask.EmbeddingStore.from_arrays(
        url, {"train": class_data(rng, 3 * rng.normal(size=(K, D)), 300)}, chunk_rows=100,
        storage_options=opts)
    want = ncdask.class_stats(s, "train").compute()
    ncdask.class_stats(s, "train", cache=True)
    fs = s3fs.S3FileSystem(**opts)
    (f,) = fs.glob(f"{bucket}/verified.zarr/**/.ncdask-stats/k-*/within_cov/c/0/0")
    b = bytearray(fs.cat_file(f))
    b[len(b) // 2] ^= 0x10
    fs.pipe_file(f, bytes(b))
    r = ncdask.check_store(url, storage_options=opts)
    assert len(r.problems) == 1 and "'within_cov', chunk (0, 0)" in r.problems[0]
    with pytest.warns(DamagedCacheWarning):
        got = ncdask.class_stats(ncdask.EmbeddingStore.open(url, storage_options=opts), "train",
                                 cache=True)
    assert_stats_equal(got.compute(), want)
    assert ncdask.check_store(url, storage_options=opts).ok

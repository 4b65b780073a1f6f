"""Statistics cached in the store: hits read nothing, appends read only the new rows (issue 15)."""

import numpy as np
import pytest
from dense import assert_stats_equal, class_data

import ncdask
from ncdask.store import core as S

K, D = 5, 8


@pytest.fixture
def reads(monkeypatch):
    """Counts the embedding chunks read (every store read goes through NamedChunks)."""
    n = {"embeddings": 0}
    orig = S.NamedChunks.__getitem__

    def counted(self, key):
        if self.a.path.endswith("embeddings"):
            n["embeddings"] += 1
        return orig(self, key)

    monkeypatch.setattr(S.NamedChunks, "__getitem__", counted)
    return n


def _store(tmp_path, n=1000):
    rng = np.random.default_rng(0)
    train = class_data(rng, np.full((K, D), 3.0), n)
    s = ncdask.EmbeddingStore.from_arrays(str(tmp_path / "s.zarr"), {"train": train},
                                          chunk_rows=100)
    return s, rng


def test_a_hit_reads_no_chunk_and_appends_read_only_theirs(tmp_path, reads):
    s, rng = _store(tmp_path)
    cold = ncdask.class_stats(ncdask.EmbeddingStore.open(s.url), "train", cache=True)
    assert reads["embeddings"] == 10  # every chunk once
    reads["embeddings"] = 0
    warm = ncdask.class_stats(ncdask.EmbeddingStore.open(s.url), "train", cache=True).compute()
    assert reads["embeddings"] == 0
    assert_stats_equal(warm, cold.compute())
    s.append("train", rng.normal(size=(250, D)), np.arange(250) % K)  # rows 1000-1249
    reads["embeddings"] = 0
    grown = ncdask.class_stats(s, "train", cache=True).compute()
    assert reads["embeddings"] == 3  # chunks 10, 11, 12: nothing read twice
    assert_stats_equal(grown, ncdask.class_stats(s, "train").compute())
    assert sorted(_rows_read(s)) == [250, 1000]  # each entry records the rows it read


def _rows_read(s):
    """``rows_read`` of every statistics-cache entry of ``s``."""
    import json
    from pathlib import Path

    metas = Path(s.url).rglob(".ncdask-stats/*/zarr.json")
    return [json.loads(m.read_text())["attributes"]["ncdask_cache"]["rows_read"] for m in metas]


def test_new_shards_are_merged_in(tmp_path, reads):
    import dask

    s, rng = _store(tmp_path)
    ncdask.class_stats(s, "train", cache=True)
    with dask.config.set({"ncdask.writers": "shards"}):
        w = ncdask.EmbeddingStore.open(s.url, "a")
        w.append("train", rng.normal(size=(30, D)), np.arange(30) % K)
    reads["embeddings"] = 0
    got = ncdask.class_stats(ncdask.EmbeddingStore.open(s.url), "train", cache=True).compute()
    assert reads["embeddings"] == 1
    assert_stats_equal(got, ncdask.class_stats(ncdask.EmbeddingStore.open(s.url), "train"))


@pytest.mark.parametrize("option", [{"global_mean": "weighted"}, {"dtype": "float32"},
                                    {"ignore_index": -100}, {"min_count": 250}])
def test_each_option_is_its_own_entry(tmp_path, reads, option):
    s, _ = _store(tmp_path)
    ncdask.class_stats(s, "train", cache=True)
    reads["embeddings"] = 0
    got = ncdask.class_stats(s, "train", cache=True, **option).compute()
    assert reads["embeddings"] > 0  # not the other entry
    want = ncdask.class_stats(s, "train", **option).compute()
    assert_stats_equal(got, want)
    reads["embeddings"] = 0
    ncdask.class_stats(s, "train", cache=True, **option)
    assert reads["embeddings"] == 0


def test_a_replaced_split_is_recomputed(tmp_path):
    s, rng = _store(tmp_path)
    ncdask.class_stats(s, "train", cache=True)
    s = ncdask.EmbeddingStore.open(s.url, "a")
    s.delete_split("train")
    X = rng.normal(size=(300, D))
    s.append("train", X, np.arange(300) % K)
    got = ncdask.class_stats(s, "train", cache=True).compute()
    assert got.counts.values.tolist() == [60] * K
    stored = X.astype(np.float32).astype(np.float64)  # a float32 store
    np.testing.assert_allclose(got.means.values[0], stored[::K].mean(0), rtol=1e-12)


def test_an_unwritable_store_computes_without_a_cache(tmp_path, monkeypatch):
    s, _ = _store(tmp_path)

    def refuse(*a, **k):
        raise PermissionError("read-only")

    monkeypatch.setattr(ncdask.stats.core, "save_stats", refuse)
    got = ncdask.class_stats(s, "train", cache=True)
    assert_stats_equal(got, ncdask.class_stats(s, "train").compute())
    assert not (tmp_path / "s.zarr" / "train" / ".ncdask-stats").exists() or not any(
        p.name.startswith("k-") for p in (tmp_path / "s.zarr" / "train" / ".ncdask-stats")
        .iterdir())


def test_cli_stats_and_analyze_use_the_cache(tmp_path, reads, capsys):
    from ncdask.cli import main

    s, _ = _store(tmp_path)
    assert main(["stats", s.url, "--no-cache", "-q"]) == 0
    assert not (tmp_path / "s.zarr" / "train" / ".ncdask-stats").exists()
    assert main(["stats", s.url, "-q"]) == 0
    first = capsys.readouterr().out
    reads["embeddings"] = 0
    assert main(["stats", s.url, "-q"]) == 0
    assert main(["analyze", s.url, "--metrics", "nc1", "-q"]) == 0
    assert reads["embeddings"] == 0  # both from the cache
    out = capsys.readouterr().out
    assert first.splitlines()[-1] in out  # the same N, K, D and tr(Sigma_W)


def test_sweep_with_out_measures_only_new_or_changed_sets(tmp_path, reads):
    rng = np.random.default_rng(1)
    s = ncdask.EmbeddingStore.create(str(tmp_path / "s.zarr"), K, D, chunk_rows=100)
    y = np.arange(200) % K

    def add(e, n=200):
        s.append("train", *class_data(rng, (1 + e) * np.eye(K, D), n), epoch=e)

    for e in range(4):
        add(e)
    out = str(tmp_path / "res.zarr")
    kw = dict(over="epoch", metrics=["nc1_quot", "nc2_etf_err"])
    first = ncdask.sweep(s, out=out, **kw)
    assert first.attrs["ncdask_sweep"]["measured"] == ["0", "1", "2", "3"]
    reads["embeddings"] = 0
    again = ncdask.sweep(s, out=out, **kw)
    assert again.attrs["ncdask_sweep"]["measured"] == [] and reads["embeddings"] == 0
    add(4)  # a new epoch lands
    reads["embeddings"] = 0
    grown = ncdask.sweep(s, out=out, **kw)
    assert grown.attrs["ncdask_sweep"]["measured"] == ["4"]
    assert reads["embeddings"] == 2  # epoch 4's two chunks, nothing else
    full = ncdask.sweep(s, compute=True, **kw)
    assert grown.epoch.values.tolist() == [0, 1, 2, 3, 4]
    for v in ("nc1_quot", "nc2_etf_err"):
        np.testing.assert_allclose(grown[v].values, full[v].values, rtol=1e-12)
    s.append("train", rng.normal(size=(10, D)), y[:10], epoch=2)  # epoch 2 changes
    changed = ncdask.sweep(s, out=out, **kw)
    assert changed.attrs["ncdask_sweep"]["measured"] == ["2"]
    other = ncdask.sweep(s, out=out, over="epoch", metrics=["nc1_quot"])  # other options
    assert other.attrs["ncdask_sweep"]["measured"] == ["0", "1", "2", "3", "4"]
    assert list(other.data_vars) == ["nc1_quot"]
    with pytest.raises(FileExistsError):
        ncdask.sweep(s, out=s.url, **kw)  # never onto the store itself


_TWICE = """
import sys, numpy as np, ncdask
st = ncdask.class_stats(ncdask.EmbeddingStore.open(sys.argv[1]), "train", cache=True)
print(repr(float(st.within_cov.values.trace())))
"""


@pytest.mark.slow
def test_two_processes_filling_the_cache_at_once_agree(tmp_path):
    import subprocess

    from killing import python

    s, _ = _store(tmp_path, n=5_000)  # ~1 s of work each: the two started together overlap
    procs = [python(_TWICE, s.url, stdout=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    want = float(ncdask.class_stats(s, "train").within_cov.values.trace())
    assert [float(o) for o in outs] == pytest.approx([want, want], rel=1e-12)
    again = ncdask.class_stats(s, "train", cache=True)  # one whole entry is left
    assert float(again.within_cov.values.trace()) == pytest.approx(want, rel=1e-12)


def test_a_lost_chunk_among_the_new_rows_is_an_error_not_a_cached_nan(tmp_path):
    s, rng = _store(tmp_path)
    ncdask.class_stats(s, "train", cache=True)
    s.append("train", rng.normal(size=(250, D)), np.arange(250) % K)  # chunks 10-12
    chunk = tmp_path / "s.zarr" / "train" / "embeddings" / "c" / "11" / "0"
    saved = chunk.read_bytes()
    chunk.unlink()
    with pytest.raises(ncdask.store.NcdaskStoreError, match="chunk is missing"):
        ncdask.class_stats(s, "train", cache=True)
    chunk.write_bytes(saved)  # repaired: right numbers, nothing NaN was kept
    got = ncdask.class_stats(s, "train", cache=True).compute()
    assert_stats_equal(got, ncdask.class_stats(s, "train").compute())


def test_rows_committed_while_an_entry_is_computed_are_counted_once(tmp_path, monkeypatch):
    """An entry covers exactly the rows its key names: rows another writer commits between
    the key's snapshot and the pass are not in the entry, then merged in once."""
    s, rng = _store(tmp_path, n=100)
    read = s.split

    def split_after_a_commit(*args, **kwargs):
        monkeypatch.setattr(s, "split", read)
        other = ncdask.EmbeddingStore.open(s.url, "a")
        other.append("train", *class_data(rng, np.ones((K, D)), 2))
        return read(*args, **kwargs)

    monkeypatch.setattr(s, "split", split_after_a_commit)
    assert int(ncdask.class_stats(s, "train", cache=True).n_samples) == 102
    s.append("train", *class_data(rng, np.ones((K, D)), 3))
    assert int(ncdask.class_stats(s, "train", cache=True).n_samples) == 105


def test_a_cache_folder_another_process_creates_meanwhile_is_taken(tmp_path, monkeypatch):
    """Two processes filling a cache both find no cache folder; the second one's creation
    meets the first one's group (zarr: ContainsGroupError) and uses it."""
    import zarr

    from ncdask.stats import cache

    url = str(tmp_path / "s.zarr" / "train" / ".ncdask-stats" / "entry")
    real = zarr.open_group

    def racing(path, mode="r", **kw):
        if mode == "a":  # the other process won: its group is there now
            real(path, mode="w", **kw)
            raise zarr.errors.ContainsGroupError(f"a group exists at {path}")
        return real(path, mode=mode, **kw)

    monkeypatch.setattr(zarr, "open_group", racing)
    cache._require_folder(url, None)
    assert zarr.open_group(url.rsplit("/", 1)[0], mode="r") is not None

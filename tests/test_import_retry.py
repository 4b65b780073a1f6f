"""Imports are validated first, all or nothing, and safe to run again."""

import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from killing import python, run

import ncdask
from ncdask.store import DuplicateImportError

K, D = 3, 5


def _files(tmp_path, n=200, seed=0, name="a"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)).astype(np.float32)
    y = rng.integers(0, K, n)
    np.save(tmp_path / f"{name}X.npy", X)
    np.save(tmp_path / f"{name}y.npy", y)
    return str(tmp_path / f"{name}X.npy"), str(tmp_path / f"{name}y.npy"), X, y


def test_same_source_refused_other_sources_added(tmp_path, mem_url):
    xa, ya, Xa, _ = _files(tmp_path)
    xb, yb, Xb, _ = _files(tmp_path, seed=1, name="b")
    s = ncdask.EmbeddingStore.create(mem_url(), K, D, chunk_rows=64)
    assert s.import_files("train", xa, ya) == 200
    assert s.import_files("train", xb, yb) == 400  # another source joins the split
    # the same content under another name is the same source
    shutil.copyfile(xa, tmp_path / "copyX.npy")
    for x in (xa, str(tmp_path / "copyX.npy")):
        with pytest.raises(DuplicateImportError, match="already holds"):
            s.import_files("train", x, ya)
    assert s.n_rows("train") == 400
    assert [src["rows"] for src in s.sources("train")] == [200, 200]
    assert s.import_files("train", xa, ya, mode="append") == 600
    assert s.import_files("train", xb, yb, mode="overwrite") == 200
    np.testing.assert_array_equal(s.split("train").embeddings.values, Xb)
    assert len(s.sources("train")) == 1
    with pytest.raises(ValueError, match="mode must be"):
        s.import_files("train", xa, ya, mode="replace")


def _lookalike(tmp_path):
    """Two .npy pairs with the same labels whose embeddings differ in one value, placed
    between the 64 blocks of 64 KiB that fingerprints once sampled (offsets size*i/64)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40_000, 32)).astype(np.float32)  # 5.1 MB: gaps between the blocks
    y = rng.integers(0, K, len(X))
    np.save(tmp_path / "aX.npy", X)
    size = (tmp_path / "aX.npy").stat().st_size
    off = (65536 + size // 64) // 2  # after block 0 ends, before block 1 starts
    X.reshape(-1)[(off - (size - X.nbytes)) // 4] += 1  # the header precedes the data
    np.save(tmp_path / "bX.npy", X)
    np.save(tmp_path / "y.npy", y)
    return [str(tmp_path / f) for f in ("aX.npy", "bX.npy", "y.npy")]


def test_files_differing_only_between_sampled_blocks_are_two_sources(tmp_path, mem_url):
    xa, xb, y = _lookalike(tmp_path)
    s = ncdask.EmbeddingStore.create(mem_url(), K, 32)
    assert s.import_files("train", xa, y) == 40_000
    assert s.import_files("train", xb, y) == 80_000  # another source, not a repeat
    assert len({src["fingerprint"] for src in s.sources("train")}) == 2
    for x in (xa, xb):  # an exact repeat is still refused
        with pytest.raises(DuplicateImportError, match="already holds"):
            s.import_files("train", x, y)
    assert s.n_rows("train") == 80_000


def test_cli_imports_a_lookalike_file_instead_of_skipping_it(tmp_path, capsys):
    from ncdask.cli import main

    xa, xb, y = _lookalike(tmp_path)
    xc, yc = str(tmp_path / "cX.npy"), str(tmp_path / "cy.npy")
    np.save(xc, np.ones((100, 32), np.float32))
    np.save(yc, np.zeros(100, int))
    url = str(tmp_path / "s.zarr")
    base = ["--store", url, "--split", "train", "--n-classes", str(K)]
    assert main(["import", xa, y, xb, y, *base]) == 0  # not "the same file is named twice"
    assert ncdask.EmbeddingStore.open(url).n_rows("train") == 80_000
    url2 = str(tmp_path / "s2.zarr")
    base[1] = url2
    assert main(["import", xa, y, *base]) == 0
    capsys.readouterr()
    # b is not a's rows again: imported, not skipped as a continued import
    assert main(["import", xb, y, xc, yc, *base]) == 0
    assert "continuing" not in capsys.readouterr().err
    assert ncdask.EmbeddingStore.open(url2).n_rows("train") == 80_100
    assert main(["import", xb, y, *base]) == 2  # an exact repeat is still refused
    assert "already holds" in capsys.readouterr().err


def test_a_failed_import_changes_nothing(tmp_path, mem_url):
    xa, ya, Xa, ya_ = _files(tmp_path)
    s = ncdask.EmbeddingStore.create(mem_url(), K, D, chunk_rows=16)
    s.import_files("train", xa, ya)
    before = s.split("train").attrs["class_counts"].copy()
    bad = Xa.copy()
    bad[150] = np.nan  # found only while writing, past several chunks
    np.save(tmp_path / "bad.npy", bad)
    for split in ("train", "new"):
        with pytest.raises(ValueError, match="NaN"):
            s.import_files(split, str(tmp_path / "bad.npy"), ya)
    assert s.splits() == ["train"]  # no empty split left behind
    assert s.n_rows("train") == 200
    np.testing.assert_array_equal(s.split("train").attrs["class_counts"], before)
    np.testing.assert_array_equal(s.split("train").embeddings.values, Xa)
    # and an overwrite that fails keeps the old rows
    with pytest.raises(ValueError, match="NaN"):
        s.import_files("train", str(tmp_path / "bad.npy"), ya, mode="overwrite")
    np.testing.assert_array_equal(s.split("train").embeddings.values, Xa)
    # labels out of range and wrong widths are found before anything is written
    np.save(tmp_path / "ybad.npy", np.full(200, K))
    with pytest.raises(ValueError, match="outside"):
        s.import_files("more", xa, str(tmp_path / "ybad.npy"))
    np.save(tmp_path / "wide.npy", np.zeros((200, D + 1)))
    with pytest.raises(ValueError, match="nothing was imported"):
        s.import_files("more", str(tmp_path / "wide.npy"), ya)
    assert s.splits() == ["train"]
    # nothing staged is left over in the store either, and no lease (.ncdask/leases)
    assert not [p for p in s.core.group if str(p).startswith(".") and p != ".ncdask"]
    assert not list(s.core.group[".ncdask/leases"])


def test_delete_split(tmp_path, mem_url):
    xa, ya, Xa, _ = _files(tmp_path)
    s = ncdask.EmbeddingStore.create(mem_url(), K, D, chunk_rows=64)
    s.import_files("train", xa, ya)
    s.append("test", Xa[:10], np.zeros(10, int))
    s.set_classifier(np.ones((K, D)))
    assert s.delete_split("test") == 10
    assert s.splits() == ["train"] and s.classifier()[0].shape == (K, D)
    with pytest.raises(KeyError, match="unknown split"):
        s.delete_split("test")
    ro = ncdask.EmbeddingStore.open(s.url)
    with pytest.raises(PermissionError):
        ro.delete_split("train")
    s.append("test", Xa[:4], np.zeros(4, int))  # the name is free again
    assert s.n_rows("test") == 4


_KILLED = """
import sys, ncdask
s = ncdask.EmbeddingStore.open(sys.argv[1], "a")
print("start", flush=True)
s.import_files("train", sys.argv[2], sys.argv[3])
print("done", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_killed_import_then_rerun_gives_each_row_once(tmp_path, delay):
    xa, ya, X, y = _files(tmp_path, n=300_000)
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.create(url, K, D, chunk_rows=4096)
    s.append("train", X[:10], y[:10])
    p = python(_KILLED, url, xa, ya, stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == "start"
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = ncdask.EmbeddingStore.open(url, "a")
    n = s.n_rows("train")
    assert n in (10, 10 + X.shape[0])  # all or nothing
    assert s.split("train").attrs["class_counts"].sum() == n
    if n == 10:
        assert s.import_files("train", xa, ya) == 10 + X.shape[0]
    else:
        with pytest.raises(DuplicateImportError):
            s.import_files("train", xa, ya)
    got = s.split("train")
    np.testing.assert_array_equal(got.labels.values, np.concatenate([y[:10], y]))
    np.testing.assert_array_equal(got.embeddings.values[-5:], X[-5:])


def _short_npz(path, X, y, claim_x=None, claim_y=None):
    """An .npz whose members' headers claim more rows than they hold."""
    import io
    import zipfile

    def member(a, claim):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a)
        raw = buf.getvalue()
        if claim is None:
            return raw
        hdr = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
               "shape": (claim, *a.shape[1:])}
        out = io.BytesIO()
        np.lib.format.write_array_header_1_0(out, hdr)
        return out.getvalue() + a.tobytes()

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", member(X, claim_x))
        z.writestr("Y.npy", member(y, claim_y))


def test_truncated_npz_members_are_errors_not_hangs(tmp_path, mem_url, capsys):
    """Headers that promise more rows than a member holds: an error, and nothing written."""
    from ncdask.cli import main

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, D)).astype(np.float32), np.arange(50) % K
    _short_npz(tmp_path / "shortX.npz", X, y, claim_x=100, claim_y=None)
    _short_npz(tmp_path / "shortY.npz", X, y, claim_x=100, claim_y=100)
    s = ncdask.EmbeddingStore.create(mem_url(), K, D, chunk_rows=16)
    for name in ("shortX.npz", "shortY.npz"):
        with pytest.raises(ValueError, match="truncated or damaged|do not pair up"):
            s.import_files("train", str(tmp_path / name))
    assert s.splits() == []
    url = str(tmp_path / "cli.zarr")
    assert main(["import", str(tmp_path / "shortY.npz"), "--store", url, "--split", "train",
                 "--n-classes", str(K)]) == 2
    assert "truncated or damaged" in capsys.readouterr().err
    assert not (tmp_path / "cli.zarr").exists()  # found before the store was created


def test_npy_files_are_read_in_blocks_not_mapped(tmp_path, mem_url):
    """A mapped .npy file's pages count in the importer's RSS up to the file's size (20 GB
    at LC's scale): blocks are read, and a truncated file is refused before any write."""
    import mmap

    from ncdask.store.files import iter_saved_arrays

    xa, ya, X, y = _files(tmp_path)
    blocks = list(iter_saved_arrays(xa, ya, rows=64))
    for xb, yb in blocks:
        for a in (xb, yb):
            while a is not None:
                assert not isinstance(a, (np.memmap, mmap.mmap))
                a = getattr(a, "base", None)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), X)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), y)
    (tmp_path / "cutX.npy").write_bytes((tmp_path / "aX.npy").read_bytes()[:-8])
    s = ncdask.EmbeddingStore.create(mem_url(), K, D, chunk_rows=64)
    with pytest.raises(ValueError, match="cutX.npy: the file ends before the 200 rows"):
        s.import_files("train", str(tmp_path / "cutX.npy"), ya)
    assert s.splits() == []


def test_create_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    from ncdask.cli import main

    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("only copy")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not an ncdask store"):
            ncdask.EmbeddingStore.create(str(mine), K, D, overwrite=overwrite)
    xa, ya, _, _ = _files(tmp_path)
    assert main(["import", xa, ya, "--store", str(mine), "--split", "train", "-q"]) == 2
    assert "not an ncdask store" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "only copy" and (mine / "sub").is_dir()
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert ncdask.EmbeddingStore.create(str(tmp_path / "empty"), K, D).n_classes == K


_APPENDER = """
import sys, numpy as np, ncdask
s = ncdask.EmbeddingStore.open(sys.argv[1], "a")
v = int(sys.argv[2])
if sys.argv[3] == "append":
    for _ in range(15):
        s.append("train", np.full((10, 5), float(v)), np.full(10, v))
else:
    s.import_files("train", sys.argv[4], sys.argv[5])
"""


@pytest.mark.slow
def test_concurrent_writers_on_one_split_lose_nothing(tmp_path):
    """Two processes appending, and two importing, into one split (local disk)."""
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.create(url, K, D, chunk_rows=64)
    s.append("train", np.zeros((1, D)), np.zeros(1, int))
    files = [_files(tmp_path, n=2_000, seed=i, name=f"f{i}") for i in (1, 2)]
    procs = [python(_APPENDER, url, str(v), "append") for v in (1, 2)]
    procs += [python(_APPENDER, url, "0", "import", f[0], f[1]) for f in files]
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    s = ncdask.EmbeddingStore.open(url)
    d = s.split("train")
    X, y = d.embeddings.values, d.labels.values
    assert s.n_rows("train") == 1 + 2 * 150 + 2 * 2_000
    np.testing.assert_array_equal(d.attrs["class_counts"], np.bincount(y, minlength=K))
    for v in (1, 2):  # every appended row kept, with its own label
        assert ((X[:, 0] == v) & (y == v)).sum() == 150
    assert len(s.sources("train")) == 2


def test_killed_multi_file_cli_import_continues_when_run_again(tmp_path):
    """``ncdask import a b c`` SIGKILLed after its first file: the same command run again
    skips what was committed and imports the rest; every row is in the split once."""
    files = [_files(tmp_path, n=300_000, seed=i, name=f"f{i}") for i in range(3)]
    url = str(tmp_path / "s.zarr")
    cmd = ["import sys; from ncdask.cli import main; sys.exit(main())",
           "import", *[p for f in files for p in f[:2]], "--store", url, "--split", "train",
           "--n-classes", str(K)]
    p = python(*cmd, stderr=subprocess.PIPE)
    for line in p.stderr:  # progress goes to stderr, one line per committed file
        if line.startswith("[1/3]"):
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    n = ncdask.EmbeddingStore.open(url).n_rows("train")
    assert n in (300_000, 600_000)  # whole files only
    r = run(*cmd)
    assert r.returncode == 0, r.stderr
    assert "continuing an interrupted import" in r.stderr
    d = ncdask.EmbeddingStore.open(url).split("train")
    np.testing.assert_array_equal(d.labels.values, np.concatenate([f[3] for f in files]))
    np.testing.assert_array_equal(d.embeddings.values[::1000],
                                  np.concatenate([f[2] for f in files])[::1000])
    r = run(*cmd)  # all in: refused, as before
    assert r.returncode != 0 and "already holds" in r.stderr

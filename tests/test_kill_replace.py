"""SIGKILL during every kind of replace leaves the old version or the new, whole (issue 13).

Each case runs a real writer process that replaces one thing over and over
(a classifier, statistics, results) and kills it at several moments; then
the stored version must be one whole version, a later writer must succeed,
and what the killed writer left aside must be cleaned up by that later
writer once the killed writer's lease has expired.
"""

import os
import time

import numpy as np
import pytest
import xarray as xr
import zarr
from killing import classifier_survives_kills, output_survives_kills

import ncdask
from ncdask.store.staging import beside_lease
from ncdask.store.zarrio import open_dataset, url_fs, write_dataset


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_sigkill_during_set_classifier_keeps_one_whole_version(tmp_path, delay, killed_lease):
    url = str(tmp_path / "s.zarr")
    classifier_survives_kills(url, None, [delay, delay + 0.1])
    # the killed writers' staged versions are cleaned up by a writer after their leases expire
    time.sleep(killed_lease + 0.1)
    ncdask.EmbeddingStore.open(url, "a").core.tidy()
    g = zarr.open_group(url, mode="r")
    hidden = sorted(p.name for p in (tmp_path / "s.zarr").iterdir() if p.name.startswith("."))
    assert hidden == sorted([g.attrs["ncdask_classifier"], ".ncdask"])


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_sigkill_during_output_replace_keeps_one_whole_version(tmp_path, delay, killed_lease):
    url = str(tmp_path / "out.zarr")
    output_survives_kills(url, None, [delay, delay + 0.1])
    time.sleep(killed_lease + 0.1)  # the killed writers' leases expire: the next write tidies
    write_dataset(xr.Dataset({"z": ("x", np.zeros(3))}), url, kind="results", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # nothing left aside


def test_an_interrupted_replace_is_finished_or_refused(tmp_path):
    """The states a kill can leave, made by hand: the reader finishes or refuses, never mixes."""
    import json
    import shutil

    url = str(tmp_path / "o.zarr")
    write_dataset(xr.Dataset({"a": ("x", np.ones(5))}), url, kind="results")
    # a complete staged copy whose writer's lease has expired, and the target already
    # stripped of its root metadata: the copy is moved in
    with beside_lease(*url_fs(url, None)) as lease:
        staged = lease.stage(f"{url}.ncdask-tmp-{lease.id}", to=url)
        write_dataset(xr.Dataset({"a": ("x", np.full(5, 2.0))}), staged, kind="results")
    (tmp_path / "o.zarr" / "zarr.json").unlink()
    np.testing.assert_array_equal(open_dataset(url).a.values, 2.0)
    assert not os.path.exists(staged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]
    # root metadata that lists fewer variables than the output holds: refused, not read
    meta = json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())
    meta["attributes"]["ncdask_variables"] = ["a", "b"]
    (tmp_path / "o.zarr" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ncdask.IncompleteOutputError, match="incomplete"):
        open_dataset(url)
    with pytest.raises(ncdask.IncompleteOutputError, match="incomplete"):
        ncdask.load_stats(url)
    # a plain folder of the user's is not judged, and not touched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        write_dataset(xr.Dataset({"a": ("x", np.ones(5))}), str(mine), kind="results",
                      overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"
    shutil.rmtree(mine)

"""``ncdask.capture`` unchanged inside a data-parallel job: 2 ranks, gloo backend, CPU."""

import os
import subprocess

import numpy as np
import pytest
from killing import python

import ncdask

torch = pytest.importorskip("torch")  # the `torch` extra; installed in CI

N, K = 200, 3

_RANK = """
import sys, numpy as np, torch, torch.distributed as dist, ncdask
from ncdask import capture
rank, world, init, url = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
ddp = torch.nn.parallel.DistributedDataParallel(model)
g = torch.Generator().manual_seed(1)
X, y = torch.randn(200, 6, generator=g), torch.arange(200) % 3
idx = torch.arange(rank, 200, world)  # this rank's share, as a DistributedSampler gives
data = torch.utils.data.TensorDataset(X[idx], y[idx], idx)
loader = torch.utils.data.DataLoader(data, batch_size=16)
s = ncdask.EmbeddingStore.open(url, "a")
for epoch in (0, 1):
    capture(ddp, loader, s, layers={"hidden": "module.1"}, which="output",
            classifier="module.2", classifier_for="hidden", epoch=epoch)
try:  # a repeated call is refused on every rank, whichever rank wrote first
    capture(ddp, loader, s, layers={"hidden": "module.1"}, which="output", epoch=0)
except ValueError as e:
    assert "already has" in str(e)
    print("refused", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("writers", ["lock", "shards"])
def test_capture_in_a_two_rank_gloo_job(tmp_path, writers):
    url = str(tmp_path / "s.zarr")
    ncdask.EmbeddingStore.create(url, K, 8, chunk_rows=32)
    env = {**os.environ, "DASK_NCDASK__WRITERS": writers, "PYTHONWARNINGS": "ignore"}
    procs = [python(_RANK, str(r), "2", str(tmp_path / "init"), url, env=env,
                    stdout=subprocess.PIPE) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all("refused" in o for o in outs)
    # the same network and data, in this process
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(N, 6, generator=g), torch.arange(N) % K
    with torch.no_grad():
        H = model[1](model[0](X)).numpy().astype(np.float32)
    s = ncdask.EmbeddingStore.open(url)
    assert s.sets() == [{"layer": "hidden", "epoch": 0}, {"layer": "hidden", "epoch": 1}]
    for e in (0, 1):
        d = s.split("train", layer="hidden", epoch=e)
        got_X, got_y = d.embeddings.values, d.labels.values
        assert got_X.shape == (N, 8)  # both ranks' rows, each once
        # every sample once with its label, in whichever order the ranks committed
        key = lambda A, b: np.lexsort(np.column_stack([A, b]).T)  # noqa: E731
        np.testing.assert_allclose(got_X[key(got_X, got_y)], H[key(H, y.numpy())],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.sort(got_y), np.sort(y.numpy()))
        np.testing.assert_array_equal(d.attrs["class_counts"], np.bincount(y.numpy()))
        np.testing.assert_allclose(s.classifier(layer="hidden", epoch=e)[0],
                                   model[2].weight.detach().numpy(), rtol=1e-6)

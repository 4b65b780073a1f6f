"""ncdask.capture: features recorded through hooks equal those computed by hand."""

import numpy as np
import pytest
import xarray as xr
from dense import assert_stats_equal

import ncdask
from ncdask import capture, sweep

torch = pytest.importorskip("torch")
nn = torch.nn

K, D_IN, H = 3, 5, 8
METRICS = ["nc1_quot", "nc1_cdnv", "nc2_etf_err", "nc3_dual_err", "nc3_bias", "nc4_agree",
           "nc5_ood_dev", "mean_norms", "agree_per_class"]


class Net(nn.Module):
    """An MLP whose eval and train forwards differ (dropout, batch norm) and that
    modifies the recorded hidden output in place (inplace ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(D_IN, H), nn.BatchNorm1d(H), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(H, H),
        )
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(H, K)

    def forward(self, x):
        return self.fc(self.act(self.body(x)))


def make_data(n=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    x = torch.randn(n, D_IN, generator=g) + 2.0 * nn.functional.one_hot(y, D_IN).float()
    return x, y


def loader(x, y, batch_size=16):
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


def by_hand(model, x):
    """(input of fc, output of body.0) computed without hooks, in eval mode."""
    model.eval()
    with torch.no_grad():
        h0 = model.body[0](x)
        body = model.body(x)
        fc_in = torch.relu(body)
    return fc_in.numpy(), h0.numpy()


def train_a_little(model, x, y, steps=5, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def new_store(mem_url, dim=H, n_classes=K):
    return ncdask.EmbeddingStore.create(mem_url(), n_classes, dim, chunk_rows=32)


def test_capture_layers_equal_manual_embeddings(mem_url):
    torch.manual_seed(0)
    model = Net()
    x, y = make_data()
    xt, yt = make_data(41, seed=1)
    xo, _ = make_data(23, seed=2)
    s = new_store(mem_url)
    layers = {"fc_in": "fc", "hidden": ("body.0", "output")}
    for split, (xs, ys) in {"train": (x, y), "test": (xt, yt), "ood": (xo + 3, yt[:23])}.items():
        sets = capture(model, loader(xs, ys), s, split, layers=layers, classifier="fc")
    assert [(d["layer"], d["module"], d["which"], d["dim"]) for d in sets] == [
        ("fc_in", "fc", "input", H), ("hidden", "body.0", "output", H)]
    assert [d["rows"] for d in sets] == [23, 23]
    assert s.sets() == [{"layer": "fc_in"}, {"layer": "hidden"}]
    # the classifier goes with the set that records its input only
    W, b = s.classifier(layer="fc_in")
    np.testing.assert_array_equal(W, model.fc.weight.detach().numpy().astype(np.float64))
    np.testing.assert_array_equal(b, model.fc.bias.detach().numpy().astype(np.float64))
    with pytest.raises(KeyError):
        s.classifier(layer="hidden")

    fc_in, h0 = by_hand(model, x)
    # eval mode was used: dropout would zero about half of the features otherwise
    np.testing.assert_allclose(s.split("train", layer="fc_in").embeddings.values, fc_in,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.split("train", layer="hidden").embeddings.values, h0,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s.split("train", layer="fc_in").labels.values, y.numpy())

    # stats and metrics equal those of the same embeddings written directly
    ref = ncdask.EmbeddingStore.from_arrays(
        mem_url(), {"train": (fc_in, y.numpy()), "test": (by_hand(model, xt)[0], yt.numpy()),
                    "ood": (by_hand(model, xo + 3)[0], yt[:23].numpy())},
        W=model.fc.weight.detach(), b=model.fc.bias.detach(), chunk_rows=32)
    st_c = ncdask.class_stats(s.split("train", layer="fc_in")).compute()
    st_r = ncdask.class_stats(ref, "train").compute()
    assert_stats_equal(st_c, st_r, 1e-6)
    m_c = ncdask.measure(st_c, weights=W, bias=b, test=s.split("test", layer="fc_in"),
                         ood=s.split("ood", layer="fc_in"), metrics=METRICS).compute()
    Wr, br = ref.classifier()
    m_r = ncdask.measure(st_r, weights=Wr, bias=br, test=ref["test"], ood=ref["ood"],
                         metrics=METRICS).compute()
    xr.testing.assert_allclose(m_c, m_r, rtol=1e-6, atol=1e-9)


def test_eval_mode_restored_and_hooks_removed(mem_url):
    torch.manual_seed(0)
    model = Net()
    model.train()
    model.body[1].eval()  # a frozen batch norm stays frozen
    x, y = make_data(40)
    capture(model, loader(x, y), new_store(mem_url), layers=["fc"], classifier="fc")
    assert model.training and model.body[0].training and not model.body[1].training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

    def failing():
        yield x[:16], y[:16]
        raise RuntimeError("loader broke")

    s = new_store(mem_url)
    with pytest.raises(RuntimeError, match="loader broke"):
        capture(model, failing(), s, layers=["fc"])
    assert model.training and not model.body[1].training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    # the batches before the failure are committed
    assert s.split("train", layer="fc").sizes["sample"] == 16


def test_epoch_and_layer_sweep_match_per_set_measurements(mem_url):
    torch.manual_seed(0)
    model = Net()
    x, y = make_data(120)
    xt, yt = make_data(50, seed=3)
    s = new_store(mem_url)
    layers = {"fc_in": "fc", "hidden": ("body.4", "output")}
    for epoch in (10, 0, 2):  # written out of order: the sweep sorts
        m = Net()
        m.load_state_dict(model.state_dict())
        train_a_little(m, x, y, steps=5 * epoch)
        for split, (xs, ys) in {"train": (x, y), "test": (xt, yt)}.items():
            capture(m, loader(xs, ys, 32), s, split, layers=layers, classifier="fc",
                    epoch=epoch)
    assert s.sets() == [{"layer": lay, "epoch": e} for lay in ("fc_in", "hidden")
                        for e in (0, 2, 10)]

    res = sweep(s, over="epoch", layer="fc_in", test="test", metrics=METRICS, compute=True)
    assert res.epoch.values.tolist() == [0, 2, 10]
    assert res.attrs["layer"] == "fc_in" and res.attrs["sweep_over"] == "epoch"
    for e in (0, 2, 10):
        W, b = s.classifier(layer="fc_in", epoch=e)
        one = ncdask.measure(ncdask.class_stats(s.split("train", layer="fc_in", epoch=e)),
                             weights=W, bias=b, test=s.split("test", layer="fc_in", epoch=e),
                             metrics=METRICS).compute()
        xr.testing.assert_allclose(res.sel(epoch=e, drop=True), one, rtol=1e-12)
    # training separates the classes
    assert res.nc1_quot.values[-1] < res.nc1_quot.values[0]

    lay = sweep(s, over="layer", epoch=2, metrics=["nc1_quot", "nc3_dual_err"], compute=True)
    assert lay.layer.values.tolist() == ["hidden", "fc_in"]  # the model's order
    one = ncdask.measure(ncdask.class_stats(s.split("train", layer="hidden", epoch=2)),
                         metrics=["nc1_quot"]).compute()
    np.testing.assert_allclose(lay.nc1_quot.sel(layer="hidden"), one.nc1_quot, rtol=1e-12)
    # "hidden" has no classifier: its classifier metrics are NaN, fc_in's are not
    assert np.isnan(lay.nc3_dual_err.sel(layer="hidden"))
    assert np.isfinite(lay.nc3_dual_err.sel(layer="fc_in"))
    assert sweep(s, over="layer", epoch=2, order=["fc_in", "hidden"],
                 metrics=["nc1_quot"]).layer.values.tolist() == ["fc_in", "hidden"]

    grid = sweep(s, over=("layer", "epoch"), metrics=["nc1_quot"], compute=True)
    assert grid.nc1_quot.dims == ("layer", "epoch") and grid.nc1_quot.shape == (2, 3)
    np.testing.assert_allclose(grid.nc1_quot.sel(layer="fc_in"), res.nc1_quot, rtol=1e-12)

    with pytest.raises(ValueError, match="differ in 'layer'"):
        sweep(s, over="epoch")
    with pytest.raises(ValueError, match="no embedding set"):
        sweep(s, over="epoch", layer="nope")
    with pytest.raises(TypeError, match="own stored classifier"):
        sweep(s, over="epoch", layer="fc_in", weights=np.zeros((K, H)))


def test_layers_of_different_widths_in_one_store(mem_url):
    """Two layers of widths 8 and 5 go to one store; each set equals its features
    written directly, in stats and metrics, and a layer sweep measures both."""
    torch.manual_seed(0)
    model = Net()
    x, y = make_data(90)
    xt, yt = make_data(37, seed=4)
    xo, _ = make_data(21, seed=5)
    s = new_store(mem_url, dim=H)  # the store's dim is the default set's only
    layers = {"fc_in": "fc", "x_in": ("body.0", "input")}
    data = {"train": (x, y), "test": (xt, yt), "ood": (xo + 3, yt[:21])}
    for split, (xs, ys) in data.items():
        sets = capture(model, loader(xs, ys, 16), s, split, layers=layers, classifier="fc",
                       classifier_for=["fc_in"])
        assert [(d["layer"], d["dim"]) for d in sets] == [("fc_in", H), ("x_in", D_IN)]
    assert s.sets() == [{"layer": "fc_in"}, {"layer": "x_in"}]
    assert (s.dim_of(layer="fc_in"), s.dim_of(layer="x_in"), s.dim) == (H, D_IN, H)
    ds = s.split("train", layer="x_in")
    assert ds.embeddings.shape == (90, D_IN) and ds.attrs["dim"] == D_IN
    np.testing.assert_allclose(ds.embeddings.values, x.numpy(), rtol=1e-6)
    assert s.classifier(layer="fc_in")[0].shape == (K, H)

    direct = {
        "fc_in": {k: (by_hand(model, xs)[0], ys.numpy()) for k, (xs, ys) in data.items()},
        "x_in": {k: (xs.numpy(), ys.numpy()) for k, (xs, ys) in data.items()},
    }
    W, b = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    res = sweep(s, over="layer", test="test", ood="ood", metrics=METRICS, compute=True)
    for lay, arrays in direct.items():
        ref = ncdask.EmbeddingStore.from_arrays(
            mem_url(), arrays, W=W if lay == "fc_in" else None,
            b=b if lay == "fc_in" else None, n_classes=K, chunk_rows=32)
        st_c = ncdask.class_stats(s.split("train", layer=lay)).compute()
        st_r = ncdask.class_stats(ref, "train").compute()
        assert st_c.sizes["feature"] == arrays["train"][0].shape[1]
        assert_stats_equal(st_c, st_r, 1e-6)
        Wc, bc = s.classifier(layer=lay) if lay == "fc_in" else (None, None)
        Wr, br = ref.classifier() if lay == "fc_in" else (None, None)
        kw = {"metrics": METRICS if lay == "fc_in" else ["nc1_quot", "nc1_cdnv",
                                                           "nc2_etf_err", "nc5_ood_dev",
                                                           "mean_norms"]}
        m_c = ncdask.measure(st_c, weights=Wc, bias=bc,
                             test=s.split("test", layer=lay) if Wc is not None else None,
                             ood=s.split("ood", layer=lay), **kw).compute()
        m_r = ncdask.measure(st_r, weights=Wr, bias=br,
                             test=ref["test"] if Wr is not None else None, ood=ref["ood"],
                             **kw).compute()
        xr.testing.assert_allclose(m_c, m_r, rtol=1e-6, atol=1e-9)
        # the layer sweep measures each set with its own width
        for v in m_r.data_vars:
            np.testing.assert_allclose(res[v].sel(layer=lay), m_r[v], rtol=1e-6, atol=1e-9)
    assert res.layer.values.tolist() == ["x_in", "fc_in"]  # the model's order
    assert np.isnan(res.nc3_dual_err.sel(layer="x_in"))

    # a set keeps its width: recording another module under the same name is refused
    with pytest.raises(ValueError, match=r"has 8 features, but set layer=x_in, epoch=None .*"
                                         r"has dim 5"):
        capture(model, loader(x, y), s, "more", layers={"x_in": "fc"})
    assert "more" not in s.splits(layer="x_in")
    # a classifier whose input width is not the set's is refused before anything is written
    with pytest.raises(ValueError, match="classifier 'fc' has 8 input features"):
        capture(model, loader(x, y), s, "other", layers=layers, classifier="fc",
                classifier_for="x_in")
    assert "other" not in s.splits(layer="fc_in")


def test_flattening_into_one_store(mem_url):
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(8, K))
    x = torch.randn(30, 1, 5, 5)
    y = torch.arange(30) % K
    s = new_store(mem_url, dim=8)
    layers = {"conv": ("0", "output"), "pooled": ("2", "output"), "fc_in": "4"}
    out = capture(conv, loader(x, y, 8), s, layers=layers, classifier="4")
    assert [d["dim"] for d in out] == [50, 8, 8]
    assert [s.dim_of(layer=n) for n in ("conv", "pooled", "fc_in")] == [50, 8, 8]
    conv.eval()
    with torch.no_grad():
        feat = conv[0](x)
    np.testing.assert_allclose(s.split("train", layer="conv").embeddings.values,
                               feat.reshape(30, -1).numpy(), rtol=1e-6)
    assert s.classifier(layer="fc_in")[0].shape == (K, 8)
    # (N, 2, 2, 2) pooled maps flattened: the same as the input of the classifier
    np.testing.assert_array_equal(s.split("train", layer="pooled").embeddings.values,
                                  s.split("train", layer="fc_in").embeddings.values)
    res = sweep(s, over="layer", metrics=["nc1_quot"], compute=True)
    assert res.layer.values.tolist() == ["conv", "pooled", "fc_in"]  # the model's order
    one = ncdask.measure(ncdask.class_stats(s.split("train", layer="conv")),
                         metrics=["nc1_quot"]).compute()
    np.testing.assert_allclose(res.nc1_quot.sel(layer="conv"), one.nc1_quot, rtol=1e-12)
    # a transform pools before flattening
    capture(conv, loader(x, y, 8), s, layers={"pooled2": ("1", "output")},
            transform=lambda t: t.mean(dim=(2, 3)))
    assert s.dim_of(layer="pooled2") == 2
    np.testing.assert_allclose(s.split("train", layer="pooled2").embeddings.values,
                               torch.relu(feat).mean(dim=(2, 3)).numpy(), rtol=1e-5,
                               atol=1e-6)
    # the default (untagged) set keeps the store's dim
    s3 = new_store(mem_url, dim=3)
    with pytest.raises(ValueError, match="has 8 features, but the default .* has dim 3"):
        capture(conv, loader(x, y, 8), s3, layers=None, classifier="4")
    assert s3.sets() == []


def test_a_store_per_layer_still_works(mem_url):
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(8, K))
    x = torch.randn(30, 1, 5, 5)
    y = torch.arange(30) % K
    stores = {"conv": new_store(mem_url, dim=50), "fc_in": new_store(mem_url, dim=8)}
    out = capture(conv, loader(x, y, 8), stores, layers={"conv": ("0", "output"),
                                                         "fc_in": "4"}, classifier="4")
    assert [d["dim"] for d in out] == [50, 8]
    assert stores["fc_in"].classifier(layer="fc_in")[0].shape == (K, 8)
    with pytest.raises(KeyError, match="no store given for layer 'pooled'"):
        capture(conv, loader(x, y, 8), stores, layers={"pooled": ("2", "output")})
    res = sweep(stores, over="layer", metrics=["nc1_quot"], compute=True)
    assert res.layer.values.tolist() == ["conv", "fc_in"]


def test_untagged_default_and_epoch_only_sets(mem_url):
    torch.manual_seed(0)
    model = Net()
    x, y = make_data(40)
    s = new_store(mem_url)
    out = capture(model, loader(x, y), s, classifier="fc")  # the classifier's input
    assert out == [{"module": "fc", "which": "input", "dim": H, "rows": 40}]
    assert s.sets() == [{}] and s.classifier()[0].shape == (K, H)
    for e in (1, 3):
        capture(model, [(x, y)], s, classifier="fc", epoch=e)
    assert {"epoch": 3} in s.sets()
    res = sweep(s, over="epoch", metrics=["nc1_quot"], compute=True)
    assert res.epoch.values.tolist() == [1, 3]


def test_refusals(mem_url):
    torch.manual_seed(0)
    model = Net()
    x, y = make_data(20)
    s = new_store(mem_url)
    capture(model, loader(x, y), s, layers=["fc"])
    with pytest.raises(ValueError, match="append=True"):
        capture(model, loader(x, y), s, layers=["fc"])
    capture(model, loader(x, y), s, layers=["fc"], append=True)
    assert s.split("train", layer="fc").sizes["sample"] == 40
    with pytest.raises(KeyError, match="no submodule 'nope'"):
        capture(model, loader(x, y), s, layers=["nope"])
    with pytest.raises(ValueError, match="input of classifier"):
        capture(model, loader(x, y), s, "test", layers={"h": ("body.4", "output")},
                classifier="fc")
    with pytest.raises(ValueError, match="which must be"):
        capture(model, loader(x, y), s, layers=["fc"], which="middle")
    with pytest.raises(ValueError, match="no batches"):
        capture(model, [], s, "empty", layers=["fc"])

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(H, H)

        def forward(self, x):
            return self.lin(self.lin(x))

    with pytest.raises(RuntimeError, match="ran 2 times"):
        capture(Twice(), [(torch.randn(4, H), torch.zeros(4, dtype=torch.long))], s, "t2",
                layers=["lin"])
    # classifier_for attaches W to a set that is not the recorded input
    s3 = new_store(mem_url)
    capture(model, loader(x, y), s3, layers={"h": ("body.4", "output")}, classifier="fc",
            classifier_for="h")
    assert s3.classifier(layer="h")[0].shape == (K, H)


@pytest.mark.gpu
def test_capture_cuda_model_to_cupy(mem_url):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("cupy")
    torch.manual_seed(0)
    model = Net()
    x, y = make_data(60)
    ref, _ = by_hand(model, x)
    model.cuda()
    s = new_store(mem_url)
    capture(model, loader(x, y), s, layers=["fc"], classifier="fc")
    np.testing.assert_allclose(s.split("train", layer="fc").embeddings.values, ref,
                               rtol=1e-4, atol=1e-5)
    assert next(model.parameters()).is_cuda


def test_streamed_capture_equals_stored_capture(mem_url):
    """capture into a StatsSink keeps only statistics; they and the sweep equal the stored
    capture's (issue 15)."""
    torch.manual_seed(0)
    model = Net()
    x, y = make_data(120)
    s = new_store(mem_url)
    sink = ncdask.StatsSink(K)
    layers = {"fc_in": "fc", "hidden": ("body.4", "output")}
    for epoch in (0, 3):
        m = Net()
        m.load_state_dict(model.state_dict())
        train_a_little(m, x, y, steps=5 * epoch)
        for where in (s, sink):
            capture(m, loader(x, y, 16), where, layers=layers, classifier="fc", epoch=epoch)
    assert sink.sets() == s.sets()
    for tags in s.sets():
        got, want = sink.stats(**tags), ncdask.class_stats(s.split("train", **tags)).compute()
        assert_stats_equal(got, want)
    metrics = ["nc1_quot", "nc2_etf_err", "nc3_dual_err", "nc3_bias"]
    a = sink.sweep("epoch", layer="fc_in", metrics=metrics)
    b = sweep(s, over="epoch", layer="fc_in", metrics=metrics, compute=True)
    assert a.epoch.values.tolist() == [0, 3]
    for v in metrics:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-10, err_msg=v)
    with pytest.raises(ValueError, match="unlabelled data has none"):
        capture(model, loader(x, y), ncdask.StatsSink(K), layers="fc", labels=False, epoch=9)


def test_streamed_capture_of_test_and_ood_gives_every_metric(mem_url):
    """Train, then test and unlabelled OOD batches captured into a StatsSink: its sweep has
    NC4 and NC5 too, equal to the stored capture's (issue 15)."""
    torch.manual_seed(1)
    model = Net()
    x, y = make_data(120)
    xt, yt = make_data(60)
    xo, _ = make_data(40)
    s, sink = new_store(mem_url), ncdask.StatsSink(K)
    with pytest.raises(ValueError, match="capture the 'train' split"):
        capture(model, loader(xt, yt), sink, layers="fc", split="test", classifier="fc")
    for epoch in (1, 2):
        train_a_little(model, x, y, steps=5)
        for where in (s, sink):
            capture(model, loader(x, y, 16), where, layers="fc", classifier="fc", epoch=epoch)
            capture(model, loader(xt, yt, 16), where, layers="fc", split="test", epoch=epoch)
            capture(model, loader(xo, yt[:40], 16), where, layers="fc", split="ood",
                    labels=False, epoch=epoch)
    metrics = ["nc4_agree", "agree_per_class", "nc5_ood_dev", "nc1_ood_class", "nc1_pinv"]
    a = sink.sweep("epoch", layer="fc", metrics=metrics)
    b = sweep(s, over="epoch", layer="fc", metrics=metrics, test="test", ood="ood",
              compute=True)
    assert a.attrs["left_out"] == {}
    for v in metrics:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-10, err_msg=v)

"""Record a PyTorch model's features into an :class:`~ncdask.EmbeddingStore` (forward hooks).

Each module's features go to their own embedding set (``layer=``, ``epoch=``): a layer or
epoch sweep for :func:`ncdask.sweep`. PyTorch is imported only by :func:`capture`."""

from __future__ import annotations

import contextlib
import itertools
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ncdask._validate import check_name
from ncdask.kernels._xp import to_numpy
from ncdask.store.embedding import EmbeddingStore
from ncdask.store.setkey import SetKey

WHICH = ("input", "output")


def _layer_specs(layers: str | Sequence[Any] | Mapping[str, Any] | None, which: str,
                 classifier: str | None) -> list[tuple[str | None, str, str]]:
    """Normalise ``layers`` to ``[(set_tag, module_name, which), ...]``."""
    if which not in WHICH:
        raise ValueError(f"which must be 'input' or 'output', got {which!r}")

    def one(tag: Any, value: Any) -> tuple[str | None, str, str]:
        mod, w = (value, which) if isinstance(value, str) else (
            value if isinstance(value, (tuple, list)) and len(value) == 2 else (None, None))
        if w is None:
            raise TypeError("a layer is a module name or a (module name, 'input'|'output') "
                            f"pair, got {value!r}")
        if not isinstance(mod, str):
            raise TypeError(f"module names must be strings, got {mod!r}")
        if w not in WHICH:
            raise ValueError(f"which must be 'input' or 'output', got {w!r} for {mod!r}")
        return check_name("layer", str(mod if tag is None else tag)), mod, w

    if layers is None:
        if classifier is None:
            raise ValueError("give layers= (module names), or classifier= to capture its input")
        return [(None, classifier, "input")]
    if isinstance(layers, str):
        return [one(layers, layers)]
    if isinstance(layers, Mapping):
        items = [one(k, v) for k, v in layers.items()]
    elif isinstance(layers, (list, tuple)):
        items = [one(None, v) for v in layers]
    else:
        raise TypeError("layers must be a module name, a list or a dict of them, got "
                        f"{type(layers).__name__}")
    if not items:
        raise ValueError("layers is empty")
    tags = [t for t, _, _ in items]
    if len(set(tags)) != len(tags):
        raise ValueError(f"duplicate layer names in {tags}")
    return items


def _module(named: Mapping[str, Any], name: str) -> Any:
    if name not in named or name == "":
        shown = [n for n in named if n][:20]
        raise KeyError(f"model has no submodule {name!r}; some of its modules: {shown}")
    return named[name]


def _to_device(x: Any, device: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _model_device(model: Any) -> Any:
    import torch

    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _features(t: Any, transform: Callable[[Any], Any] | None, cupy: Any) -> Any:
    """A private 2-D copy of a hooked tensor: NumPy-ready CPU tensor or CuPy array."""
    import torch

    if isinstance(t, (tuple, list)):  # e.g. (output, state) of recurrent modules
        t = t[0]
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"a hooked module gave {type(t).__name__}, not a tensor")
    t = t.detach()
    if transform is not None:
        t = transform(t)
    if t.ndim < 1:
        raise ValueError("a hooked tensor has no batch dimension")
    # (batch,) -> (batch, 1); (batch, ...) -> (batch, prod(...))
    t = t.unsqueeze(1) if t.ndim == 1 else t.flatten(1)
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)  # half/bfloat16/integers: NumPy and DLPack take float32
    if t.device.type == "cuda" and cupy is not None:
        # a private device copy shared with CuPy through DLPack: no host copy here
        return cupy.from_dlpack(t.contiguous().clone())
    if t.device.type != "cpu":
        return t.to("cpu")  # a fresh host copy
    # a private copy: later in-place operations of the forward must not change it
    return t.clone()


def _check_width(st: EmbeddingStore, key: SetKey, mod_name: str, kind: str, width: int) -> int:
    """The width of a layer's features, checked against its set's width if it has one."""
    try:
        have = st.dim_of(**key.tags)
    except KeyError:
        return width  # a new set: it takes this width
    if width != have:
        what = (f"set layer={key.layer}, epoch={key.epoch}" if not key.is_default
                else "the default (untagged) set")
        hint = ("; record it under a layer name (layers={name: module}) to give it a set of "
                "its own width" if key.is_default else "")
        raise ValueError(f"layer {key.layer!r} ({mod_name} {kind}) has {width} features, but "
                         f"{what} of {st.url!r} has dim {have}{hint}")
    return width


def _ranks_wait_for_each_other(torch: Any) -> None:
    """In a data-parallel job every rank checks the store before any rank writes, so a
    fast rank's first rows do not fail a slower rank's "already has rows" check."""
    dist = getattr(torch, "distributed", None)
    if (dist is not None and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1):
        dist.barrier()


def capture(model: Any, loader: Iterable[Any],
            store: EmbeddingStore | Mapping[str, EmbeddingStore], split: str = "train", *,
            layers: str | Sequence[Any] | Mapping[str, Any] | None = None, which: str = "input",
            classifier: str | None = None, classifier_for: str | Sequence[str] | None = None,
            epoch: int | None = None, device: Any = None,
            transform: Callable[[Any], Any] | None = None, max_batches: int | None = None,
            append: bool = False, allow_nonfinite: bool = False,
            labels: bool = True) -> list[dict[str, Any]]:
    """Record the input or output of named modules of a model into a store.

    One pass in eval mode without gradients; hooks and flags are restored on errors too.
    A set made here records its depth (where its tensor comes in the forward): sweeps over
    layers follow the model's order.

    Parameters
    ----------
    model : torch.nn.Module
    loader : iterable
        ``(x, y, ...)`` batches; with ``labels=False``, ``x`` alone.
    store : EmbeddingStore, StatsSink, or mapping of layer name to EmbeddingStore
        Where to write (a :class:`ncdask.StatsSink` keeps class statistics only).
    split : str, default "train"
    layers : str, list or dict, optional
        Module names: a name, a list or ``{set name: module name}``; a pair
        ``(module name, "input" | "output")`` overrides ``which``.
    which : {"input", "output"}, default "input"
        The module's first positional input or its (first) output.
    classifier : str, optional
        A linear module whose ``weight`` and ``bias`` are stored.
    classifier_for : str or list of str, optional
    epoch : int, optional
        Epoch tag of the sets written.
    device : torch.device or str, optional
        Where the inputs go; default the model's.
    transform : callable, optional
        Applied to each hooked tensor before it is flattened (e.g. pooling).
    max_batches : int, optional
    append : bool, default False
        Allow adding to a split that has rows.
    allow_nonfinite : bool, default False
    labels : bool, default True
        False writes unlabelled splits (out-of-distribution data).

    Returns
    -------
    list of dict
        Per set written: its tags, ``module``, ``which``, ``dim`` and ``rows``.

    Examples
    --------
    >>> import torch, ncdask
    >>> from ncdask.hooks import capture
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> batches = [(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))] * 2
    >>> s = ncdask.EmbeddingStore.create("memory://capture-doc", n_classes=2, dim=4,
    ...                                  overwrite=True)
    >>> sets = capture(model, batches, s, layers={"penult": "2", "in": ("0", "input")},
    ...                classifier="2")
    >>> [(d["layer"], d["dim"], d["rows"]) for d in sets]
    [('penult', 4, 10), ('in', 3, 10)]
    >>> s.classifier(layer="penult")[0].shape, s.dim_of(layer="in")
    ((2, 4), 3)
    """
    import torch

    specs = _layer_specs(layers, which, classifier)
    check_name("split", split)
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral)):
        raise TypeError(f"epoch must be an integer, got {epoch!r}")
    stores = _stores_for(store, specs)
    keys = {tag: SetKey(tag, epoch) for tag, _, _ in specs}  # each layer's set
    named = dict(model.named_modules())
    modules = {tag: _module(named, mod) for tag, mod, _ in specs}
    W, b, targets = _classifier_of(named, classifier, classifier_for, specs, stores)
    if max_batches is not None and int(max_batches) < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    if not append:
        _refuse_rows_already_there(stores, keys, split)
    _ranks_wait_for_each_other(torch)

    dev = torch.device(device) if device is not None else _model_device(model)
    with _hooked(model, modules, specs, transform) as (seen, order):
        dims = _write_batches(
            model, loader, dev, seen, order, stores, specs, keys, split=split,
            labels=labels, allow_nonfinite=allow_nonfinite, max_batches=max_batches,
            classifier=(classifier, W, targets))
    for tag in targets:
        stores[tag].set_classifier(W, b, **keys[tag].tags)
    return _written(stores, specs, keys, split, dims)


#: One recorded layer: (set tag, module name, "input" | "output").
Spec = tuple[str | None, str, str]


def _stores_for(store: Any, specs: list[Spec]) -> dict[str | None, EmbeddingStore]:
    """Each recorded layer's store (or :class:`ncdask.StatsSink`)."""
    from ncdask.sink import StatsSink

    if isinstance(store, (EmbeddingStore, StatsSink)):  # a StatsSink keeps statistics only
        return {tag: store for tag, _, _ in specs}
    if not isinstance(store, Mapping):
        raise TypeError(f"store must be an EmbeddingStore or a mapping of them, "
                        f"got {type(store).__name__}")
    missing = [t for t, _, _ in specs if t not in store]
    if missing:
        raise KeyError(f"no store given for layer {missing[0]!r}; stores for {list(store)}")
    return {tag: store[tag] for tag, _, _ in specs}


def _classifier_of(named: Mapping[str, Any], classifier: str | None,
                   classifier_for: str | Sequence[str] | None, specs: list[Spec],
                   stores: Mapping[str | None, Any]) -> tuple[Any, Any, list[str | None]]:
    """The classifier's weight and bias, and the sets that get them (checked)."""
    import torch

    if classifier is None:
        if classifier_for is not None:
            raise ValueError("classifier_for= needs classifier=")
        return None, None, []
    clf = _module(named, classifier)
    W = getattr(clf, "weight", None)
    if not isinstance(W, torch.Tensor) or W.ndim != 2:
        raise TypeError(f"classifier {classifier!r} has no 2-D weight (a Linear layer)")
    b = getattr(clf, "bias", None)
    if classifier_for is None:
        targets = [t for t, m, w in specs if m == classifier and w == "input"]
        if not targets:
            raise ValueError(
                f"no recorded layer is the input of classifier {classifier!r}; record it "
                f"(e.g. layers={{'{classifier}': ('{classifier}', 'input')}}) or name the "
                "sets that get it with classifier_for=")
    else:
        wanted = [classifier_for] if isinstance(classifier_for, str) else list(classifier_for)
        known = [t for t, _, _ in specs]
        bad = [t for t in wanted if t not in known]
        if bad:
            raise ValueError(f"classifier_for names {bad}, not among the layers {known}")
        targets = wanted
    for tag in targets:
        if int(W.shape[0]) != stores[tag].n_classes:
            raise ValueError(f"classifier {classifier!r} has {W.shape[0]} classes, the store "
                             f"of layer {tag!r} has n_classes={stores[tag].n_classes}")
    return W, b, targets


def _refuse_rows_already_there(stores: Mapping[str | None, Any],
                               keys: Mapping[str | None, SetKey], split: str) -> None:
    """A repeated call must not duplicate samples: refuse a split that has rows."""
    for tag, key in keys.items():
        st = stores[tag]
        if split in st.splits(**key.tags):
            n = st.split(split, **key.tags).sizes["sample"]
            if n:
                raise ValueError(f"split {split!r} of set layer={key.layer}, epoch={key.epoch} "
                                 f"already has {n} rows; pass append=True to add to them")


@contextlib.contextmanager
def _hooked(model: Any, modules: Mapping[str | None, Any], specs: list[Spec],
            transform: Callable[[Any], Any] | None) -> Any:
    """Forward hooks that copy what each module sees into ``seen[tag]`` and list each module's
    input and output in the order of the first forward (their depth); the model in eval mode
    meanwhile. Hooks removed and train/eval flags restored afterwards, also on errors."""
    try:
        import cupy
    except ImportError:
        cupy = None
    seen: dict[str | None, list[Any]] = {tag: [] for tag, _, _ in specs}

    def hook_for(tag: str | None, kind: str) -> Callable[..., None]:
        if kind == "input":

            def pre(module: Any, args: tuple[Any, ...]) -> None:
                if not args:
                    raise ValueError(f"layer {tag!r}: the module got no positional input")
                seen[tag].append(_features(args[0], transform, cupy))

            return pre

        def post(module: Any, args: tuple[Any, ...], output: Any) -> None:
            seen[tag].append(_features(output, transform, cupy))

        return post

    modes = {m: m.training for m in model.modules()}
    names = {id(m): n for n, m in model.named_modules()}
    order: list[tuple[str, str]] = []  # (module, "input" | "output") in the first forward

    def note(kind: str) -> Callable[..., None]:
        def hook(module: Any, *_: Any) -> None:
            if not order or order[-1] != ("", "output"):  # the model's own output ends it
                order.append((names.get(id(module), "?"), kind))
        return hook

    handles = []
    try:
        for tag, _, kind in specs:
            fn = hook_for(tag, kind)
            handles.append(modules[tag].register_forward_pre_hook(fn) if kind == "input"
                           else modules[tag].register_forward_hook(fn))
        for m in model.modules():
            handles += [m.register_forward_pre_hook(note("input")),
                        m.register_forward_hook(note("output"))]
        model.eval()
        yield seen, order
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes.items():
            m.training = flag
        for v in seen.values():
            v.clear()


def _batch_of(batch: Any, labels: bool) -> tuple[Any, Any]:
    """``(x, labels or None)`` of one loader batch."""
    if not labels:
        return (batch[0] if isinstance(batch, (tuple, list)) else batch), None
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("the loader must yield (x, y, ...) batches (for "
                        "unlabelled data pass labels=False)")
    return batch[0], to_numpy(batch[1]).reshape(-1)


def _write_batches(model: Any, loader: Iterable[Any], dev: Any,
                   seen: dict[str | None, list[Any]], order: list[tuple[str, str]],
                   stores: Mapping[str | None, Any],
                   specs: list[Spec], keys: Mapping[str | None, SetKey], *, split: str,
                   labels: bool, allow_nonfinite: bool, max_batches: int | None,
                   classifier: tuple[str | None, Any, list[str | None]]) -> dict[str | None, int]:
    """Run the forward passes and append each layer's features; returns each set's width."""
    import torch

    clf_name, W, targets = classifier
    dims: dict[str | None, int] = {}
    with contextlib.ExitStack() as stack, torch.no_grad():
        writers: dict[str | None, Any] = {}
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= int(max_batches):
                break
            x, yn = _batch_of(batch, labels)
            for v in seen.values():
                v.clear()
            model(_to_device(x, dev))
            for tag, mod_name, _ in specs:
                got = seen[tag]
                if len(got) != 1:
                    raise RuntimeError(f"module {mod_name!r} ran {len(got)} times in one "
                                       "forward; capture needs exactly one call per batch")
                if yn is not None and got[0].shape[0] != yn.shape[0]:
                    raise ValueError(f"layer {tag!r}: {got[0].shape[0]} feature rows for "
                                     f"{yn.shape[0]} labels")
            if not writers:  # first batch: check every width, then open the writers
                for tag, mod_name, kind in specs:
                    dims[tag] = _check_width(stores[tag], keys[tag], mod_name, kind,
                                             int(seen[tag][0].shape[1]))
                    if tag is not None:  # a layer: its depth orders sweeps over layers
                        stores[tag].create_set(**keys[tag].tags, dim=dims[tag],
                                               depth=order.index((mod_name, kind)))
                    if tag in targets and int(W.shape[1]) != dims[tag]:
                        raise ValueError(
                            f"classifier {clf_name!r} has {W.shape[1]} input features "
                            f"but layer {tag!r} ({mod_name} {kind}) has {dims[tag]}")
                for tag, _, _ in specs:
                    writers[tag] = stack.enter_context(stores[tag].writer(
                        split, **keys[tag].tags, allow_nonfinite=allow_nonfinite,
                        dim=dims[tag], labelled=labels))
            for tag, _, _ in specs:
                writers[tag].append(seen[tag][0], yn)  # yn None: unlabelled
                seen[tag].clear()
        if not writers:
            raise ValueError("the loader yielded no batches")
    return dims


def _written(stores: Mapping[str | None, Any], specs: list[Spec],
             keys: Mapping[str | None, SetKey], split: str,
             dims: Mapping[str | None, int]) -> list[dict[str, Any]]:
    """One entry per set written: tags, module, which, width and committed rows."""
    return [{**keys[tag].tags, "module": mod_name, "which": kind, "dim": dims[tag],
             "rows": int(stores[tag].split(split, **keys[tag].tags).sizes["sample"])}
            for tag, mod_name, kind in specs]

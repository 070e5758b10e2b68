"""Host cost of a GIN call on a GPU, measured on a CPU: the device stood in for, the launches counted.

``python -m bench.host_path [--before COMMIT] [--reps N]`` times, for each case, the host side of a whole call (the
draw included, as ``gin(x)`` and the trainer's augmentation make it) at ``COMMIT`` (default ``HEAD``) and in this
working tree, each side in a fresh process over the same cases, then prints one table and writes it as JSON with
``--json``. Host µs: the call on a CPU tensor of the case's batch and channels and a tiny image, its Triton launches
counted instead of run (:func:`_direct_us`). The counts: the call on the case's own shape with CUDA stood in for.

The stand-in (:class:`StandIn`): the input is a tensor that reports ``device="cuda"`` but holds only metadata (a
meta tensor inside). Every PyTorch operator that touches such a tensor, or makes one, runs on the meta device and is
counted as what it would queue on a GPU: a host-to-device copy, a device-to-host read (a ``.item()``, ``bool()``,
``.cpu()``, ``.tolist()`` or ``nonzero``: it synchronizes), or another device op (allocations and views are not
device work). Operators on CPU tensors run for real. Triton launches are counted, not run (so neither time holds
their own host cost: argument binding and the driver's launch). ``pin_memory`` is dropped (this CPU build of PyTorch
cannot pin). The stand-in also gives a second host time (``stood in``), its own share taken out as well as
it can be measured (its handler, the meta kernels, which are Python, and PyTorch's subclass dispatch, calibrated):
noisier than the direct one, from the residue of that subtraction.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten
CASES = (  # (label, shape, views): the training step's case (the trainer's augmentation), then gin(x)
    ("2D 32x3x192², 2 views (training step)", (32, 3, 192, 192), 2),
    ("2D 64x3x256²", (64, 3, 256, 256), 1),
    ("3D 2x3x128³", (2, 3, 128, 128, 128), 1),
)
_ALLOC = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default}
_D2H = {aten._local_scalar_dense.default, aten.nonzero.default, aten.equal.default, aten.is_nonzero.default}


class DeviceTensor(torch.Tensor):
    """A tensor that says it is on ``cuda`` and holds a meta tensor; its operators go to :data:`STANDIN`."""

    __torch_function__ = torch._C._disabled_torch_function_impl  # attribute reads as fast as a plain tensor's

    @staticmethod
    def __new__(cls, meta: torch.Tensor) -> DeviceTensor:
        out = torch.Tensor._make_wrapper_subclass(cls, meta.shape, strides=meta.stride(),
                                                  storage_offset=meta.storage_offset(), dtype=meta.dtype,
                                                  device="cuda")
        out.meta = meta
        return out

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        STANDIN.dispatches += 1
        start = time.perf_counter()
        try:
            return STANDIN.operator(func, args, dict(kwargs or {}))
        finally:
            STANDIN.overhead += time.perf_counter() - start

    def __getitem__(self, index):  # the binding's device guard refuses CUDA: basic indexing is a view
        return DeviceTensor(self.meta[index])


class StandIn:
    """Counts what a call queues on the stood-in device and the time the stand-in itself takes."""

    def __init__(self) -> None:
        self.counts = {"launches": 0, "device_ops": 0, "syncs": 0, "h2d": 0}
        self.overhead = 0.0  # seconds spent standing in: the handler, the meta kernels, the factories' stand-ins
        self.dispatches = 0  # operators that reached DeviceTensor.__torch_dispatch__
        self.machinery = 0.0  # seconds PyTorch spends around each of those, outside the handler (:meth:`calibrate`)

    def calibrate(self, reps: int = 2000) -> None:
        """Time what PyTorch's subclass dispatch adds to an operator outside the handler: a view of a stood-in
        tensor (less the handler's time) against the same view of a CPU tensor."""
        cpu, dev = torch.empty(4), DeviceTensor(torch.empty(4, device="meta"))
        plain = statistics.median(_timed(lambda: cpu.view(torch.int32)) for _ in range(reps))
        walls, handler = [], []
        for _ in range(reps):
            overhead = self.overhead
            walls.append(_timed(lambda: dev.view(torch.int32)))
            handler.append(self.overhead - overhead)
        self.machinery = max(0.0, statistics.median(walls) - statistics.median(handler) - plain)

    def standin_seconds(self, overhead: float, dispatches: int) -> float:
        """The stand-in's share of a call's wall time, from the growth of :attr:`overhead` and :attr:`dispatches`."""
        return overhead + dispatches * self.machinery

    def operator(self, func, args, kwargs):
        """An operator on a device tensor (or making one): counted, run on the meta device."""
        leaves, _ = tree_flatten((args, kwargs))
        host_in = any(isinstance(t, torch.Tensor) and not isinstance(t, DeviceTensor) and t.numel() > 0
                      for t in leaves)
        to_device = _is_cuda(kwargs.get("device"))
        to_host = func is aten._to_copy.default and kwargs.get("device") is not None and not to_device
        if func in _D2H or to_host or (func is aten.copy_.default and not isinstance(args[0], DeviceTensor)):
            self.counts["syncs"] += 1
        elif func in (aten._to_copy.default, aten.copy_.default) and host_in:
            self.counts["h2d"] += 1
        elif func not in _ALLOC and not func.is_view:
            self.counts["device_ops"] += 1
        if func is aten._local_scalar_dense.default:
            return 1  # a finiteness check passes; an index reads 1
        meta_args, meta_kwargs = tree_map(_meta, (args, kwargs))
        if to_device or to_host:
            meta_kwargs["device"] = torch.device("meta")
        meta_kwargs.pop("pin_memory", None)
        out = func(*meta_args, **meta_kwargs)
        if to_host:
            return torch.zeros(out.shape, dtype=out.dtype)
        if func is aten.copy_.default:
            return args[0]
        return tree_map(lambda t: DeviceTensor(t) if isinstance(t, torch.Tensor) and t.is_meta else t, out)

    def factory(self, real: Callable, op) -> Callable:
        """``torch.<factory>`` that makes a stood-in tensor where asked for ``device="cuda"`` (``op``: what it runs
        there), and drops ``pin_memory`` on the CPU."""
        def make(*args, **kwargs):
            if not _is_cuda(kwargs.get("device")):
                kwargs.pop("pin_memory", None)
                return real(*args, **kwargs)
            start = time.perf_counter()
            try:
                kwargs["device"] = "meta"
                return self.operator(op, (real(*args, **kwargs),), {})
            finally:
                self.overhead += time.perf_counter() - start
        return make

    @contextlib.contextmanager
    def installed(self, launch):
        """Stand in for CUDA while the block runs: factories, moves, and the launches of ``launch``
        (``fedgin.kernels.launch``); everything patched is restored after."""
        patches = [(torch, name, self.factory(getattr(torch, name), op)) for name, op in (
            ("empty", aten.alias.default), ("zeros", aten.zero_.default), ("ones", aten.zero_.default),
            ("full", aten.zero_.default), ("randint", aten.random_.default), ("rand", aten.uniform_.default),
            ("randn", aten.normal_.default))]
        patches += [(torch, "tensor", _tensor_then_copy), (torch.Tensor, "to", _to),
                    (torch.cuda, "is_current_stream_capturing", lambda: False),
                    (torch.cuda, "_lazy_init", lambda: None),
                    (launch, "_runner", lambda name, device: _Launch(self.counts)),
                    (launch, "_sm_count", lambda index: 132)]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        from torch._dynamo import trace_rules

        trace_rules.get_torch_obj_rule_map()  # dynamo's cached map of torch's functions: built from the real ones
        holders = [(launch, name) for name in ("seeded_call", "draw_table", "_zero_seed", "error_counter",
                                                "_pack_index")] + [(sys.modules["fedgin.gin"], "_route")]
        caches = [f for owner, name in holders  # what holds device tensors or kernels
                  if hasattr(f := getattr(owner, name, None), "cache_clear")]
        try:
            for owner, name, value in patches:
                setattr(owner, name, value)
            for cache in caches:
                cache.cache_clear()
            yield self.counts
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)
            for cache in caches:
                cache.cache_clear()


STANDIN = StandIn()


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _meta(t):
    if isinstance(t, DeviceTensor):
        return t.meta
    if isinstance(t, torch.Tensor):
        return t.to("meta")
    if isinstance(t, torch.device) and t.type == "cuda":
        return torch.device("meta")
    return t


_TENSOR = torch.tensor
_TO = torch.Tensor.to


def _tensor_then_copy(data, *args, device=None, **kwargs):
    """``torch.tensor`` onto a stood-in device: built on the CPU, then copied (as CUDA's own path does)."""
    out = _TENSOR(data, *args, **kwargs)
    return out if device is None else out.to(device)


def _to(self, *args, **kwargs):
    """``Tensor.to``, a move onto the stood-in device as the copy operator (the binding refuses a CUDA device)."""
    device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
    if not isinstance(self, DeviceTensor) and (device is None or device.type != "cuda"):
        return _TO(self, *args, **kwargs)
    if isinstance(self, DeviceTensor) and (device is None or device.type == "cuda") and dtype in (None, self.dtype):
        return self
    start = time.perf_counter()
    try:
        return STANDIN.operator(aten._to_copy.default, (self,), {"dtype": dtype or self.dtype,
                                                                "device": device or self.device,
                                                                "non_blocking": non_blocking})
    finally:
        STANDIN.overhead += time.perf_counter() - start


class _Launch:
    def __init__(self, counts: dict) -> None:
        self.counts = counts

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counts["launches"] += 1
        return launch


def load_fedgin(root: Path):
    """Import fedgin from ``root`` (a checkout), its ``kernels/`` as ``fedgin.kernels``, as ``setup.py`` installs
    them (ahead of any installed copy)."""
    for name, path in (("fedgin", root / "fedgin"), ("fedgin.kernels", root / "kernels")):
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    fedgin = sys.modules["fedgin"]
    fedgin.kernels = sys.modules["fedgin.kernels"]
    return fedgin


def measure(root: Path, reps: int) -> list[dict]:
    """The cases' rows for the checkout at ``root`` (run in a fresh process: :func:`main`'s ``--worker``): what a
    call queues, counted with CUDA stood in for, and its host time, measured directly (:func:`_direct_us`)."""
    fedgin = load_fedgin(root)
    from fedgin.augment.gin_ipa import GINAugmentation
    from fedgin.kernels import launch

    with STANDIN.installed(launch):
        STANDIN.calibrate()
        rows = [_row(label, _call(fedgin.gin, GINAugmentation, DeviceTensor(torch.empty(shape, device="meta")),
                                  views), reps) for label, shape, views in CASES]
    for row, (_, shape, views) in zip(rows, CASES, strict=True):
        row["standin_host_us"] = row["host_us"]
        row["host_us"] = _direct_us(fedgin.gin, GINAugmentation, launch, shape, views, reps)
    return rows


def _direct_us(gin: Callable, augmentation: type, launch, shape: tuple[int, ...], views: int, reps: int) -> float:
    """Median host µs of a case's call on a real CPU tensor of its batch and channels but a tiny image (the host's
    work does not depend on the image's size), the Triton backend's launches counted instead of run, a finiteness
    check's pass over the data answered without one (and the seeded path's CPU-only check, which a GPU call does not
    make, skipped). What else would run on a GPU runs on the CPU on the tiny tensors
    (a few µs); an explicit draw's pinned copy is not made (its time is left out): both favour the side that has
    them."""
    x = torch.rand(*shape[:2], *(16,) * (len(shape) - 2)) + 0.5
    call = (lambda: gin(x, backend="triton")) if views == 1 else _call(
        gin, lambda n_views: augmentation(n_views=n_views, backend="triton"), x, views)
    gin_module = sys.modules["fedgin.gin"]
    saved, isfinite = launch._runner, torch.isfinite
    cpu_check = getattr(gin_module, "check_finite_on_cpu", None)
    launch._runner = lambda name, device: _Launch({"launches": 0})
    torch.isfinite = lambda t: _TRUE  # the check's pass over the data is device work (counted by the stand-in)
    if cpu_check is not None:  # the CPU's immediate check, which a GPU call never makes
        gin_module.check_finite_on_cpu = lambda x, on: None
    try:
        for _ in range(20):
            call()
        gc.collect()
        gc.disable()
        times = [_timed(call) for _ in range(reps)]
    finally:
        gc.enable()
        launch._runner, torch.isfinite = saved, isfinite
        if cpu_check is not None:
            gin_module.check_finite_on_cpu = cpu_check
    return statistics.median(times) * 1e6


_TRUE = torch.ones((), dtype=torch.bool)


def _row(label: str, call: Callable[[], object], reps: int) -> dict:
    """Median host µs (the stand-in's share taken out) and counts of one case's calls."""
    for _ in range(20):  # warm: caches and first-call allocations (a kernel table per tuple)
        call()
    counts, times, standin = [], [], []
    gc.collect()
    gc.disable()  # the stand-in's garbage would be collected at random points of the timed calls
    for _ in range(reps):
        before, overhead, dispatches = dict(STANDIN.counts), STANDIN.overhead, STANDIN.dispatches
        t0 = time.perf_counter()
        call()
        wall = time.perf_counter() - t0
        stood = STANDIN.standin_seconds(STANDIN.overhead - overhead, STANDIN.dispatches - dispatches)
        times.append((wall - stood) * 1e6)
        standin.append(stood * 1e6)
        counts.append({k: STANDIN.counts[k] - before[k] for k in before})
    gc.enable()
    per_call = {k: statistics.median(c[k] for c in counts) for k in counts[0]}
    return {"case": label, "host_us": statistics.median(times), "standin_us": statistics.median(standin),
            "machinery_us": STANDIN.machinery * 1e6, **per_call}


def _call(gin: Callable, augmentation: type, x: torch.Tensor, views: int) -> Callable[[], object]:
    """A case's call: ``gin(x)``, or the trainer's augmentation with ``views`` views (its generator drawing)."""
    if views == 1:
        return lambda: gin(x)
    aug, gen = augmentation(n_views=views), torch.Generator().manual_seed(0)  # type: ignore[call-arg]
    return lambda: aug.views(x, None, gen)


def _commit(ref: str, cwd: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout.strip()


def _side(root: Path, reps: int) -> list[dict]:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(root), "--reps", str(reps)],
                         cwd=root, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@contextlib.contextmanager
def _checkout(repo: Path, commit: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=repo, capture_output=True,
                       check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True)


def table(before: list[dict], after: list[dict], labels: tuple[str, str]) -> str:
    lines = ["| case | side | host µs | × less | launches | other device ops | syncs | H2D copies | stood in |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for b, a in zip(before, after, strict=True):
        for side, row in zip(labels, (b, a), strict=True):
            lines.append(f"| {row['case']} | {side} | {row['host_us']:.1f} | {b['host_us'] / row['host_us']:.1f} | "
                         f"{row['launches']:g} | {row['device_ops']:g} | {row['syncs']:g} | {row['h2d']:g} | "
                         f"{row['standin_host_us']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="the commit to compare with (default HEAD)")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.reps)))
        return 0
    repo = Path(__file__).resolve().parent.parent
    before_commit = _commit(args.before, repo)
    with _checkout(repo, before_commit) as path:
        before = _side(path, args.reps)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                           text=True).stdout.strip()
    after_label = _commit("HEAD", repo) + ("+working tree" if dirty else "")
    after = _side(repo, args.reps)
    print(f"# host time of a GIN call, CUDA stood in for (medians of {args.reps}); torch {torch.__version__}")
    print(table(before, after, (before_commit, after_label)))
    if args.json:
        args.json.write_text(json.dumps({"before": before_commit, "after": after_label, "reps": args.reps,
                                         "rows_before": before, "rows_after": after}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

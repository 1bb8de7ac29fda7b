"""A host-device synchronisation detector that works on the CPU.

On a GPU, `torch.cuda.set_sync_debug_mode("error")` catches every synchronising call. A CPU run has no
such switch, so `SyncDetector` flags the calls that *would* make a CUDA stream wait for the host, at two
levels:

- aten ops (a TorchDispatchMode, below autograd and below the decomposition of composite ops):
  `_local_scalar_dense` (`.item()`, `bool(t)`, `int(t)`, `if t:`), `nonzero` / `masked_select` /
  boolean-mask indexing and the other ops whose output shape depends on the data (`unique`,
  `bincount`, `repeat_interleave` without `output_size`), `equal`/`is_nonzero` (a host bool), and on a
  device, copies from it to the host and blocking copies of host memory to it;
- Python calls (a TorchFunctionMode): `.cpu()`, `.numpy()`, `.tolist()`, `.item()`, and tensors made
  from host data during the step (`torch.tensor` / `as_tensor` / `asarray` / `new_tensor` of Python
  or numpy values), which on a device are blocking host-to-device copies. A constant belongs in a
  per-device cache made once; host random numbers travel in one pinned non-blocking copy.

Known blind spot: `torch.from_numpy(a).to(device)` is only caught on a device (on the CPU the copy
does not happen). `F.one_hot` reads `min()`/`max()` back on the CPU only (CUDA asserts on the device
instead), so code that must stay sync-free writes the comparison itself.

    with SyncDetector() as det:
        step()
    assert not det.events, det.report()
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
aten = torch.ops.aten

# ops that hand a value or a data-dependent shape back to the host
SYNC_OPS = {
    aten._local_scalar_dense.default: "reads a value back to the host (.item(), bool(t), int(t))",
    aten.is_nonzero.default: "reads a bool back to the host (bool(t))",
    aten.equal.default: "torch.equal returns a host bool",
    aten.nonzero.default: "nonzero: output shape depends on the data",
    aten.argwhere.default: "argwhere: output shape depends on the data",
    aten.masked_select.default: "masked_select: output shape depends on the data",
    aten._unique.default: "unique: output shape depends on the data",
    aten._unique2.default: "unique: output shape depends on the data",
    aten.unique_dim.default: "unique: output shape depends on the data",
    aten.unique_consecutive.default: "unique_consecutive: output shape depends on the data",
    aten.bincount.default: "bincount reads max() back to size its output",
    aten.histc.default: "histc reads min()/max() back when min == max",
}
_INDEX_OPS = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
_COPY_OPS = {aten._to_copy.default, aten.copy_.default}
_HOST_DATA_FUNCS = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}
_READBACK_FUNCS = {
    torch.Tensor.cpu: ".cpu() copies to the host",
    torch.Tensor.numpy: ".numpy() needs the data on the host",
    torch.Tensor.tolist: ".tolist() reads values back to the host",
}


@dataclass
class SyncEvent:
    what: str  # the op or call
    why: str
    where: str  # the innermost project frame that made the call


def _where() -> str:
    """file:line of the innermost frame in the project (outside this file), for the report."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        inside = path.is_relative_to(REPO) and not path.is_relative_to(REPO / ".venv")
        if inside and path != Path(__file__).resolve():
            return f"{path.relative_to(REPO)}:{frame.lineno} ({frame.name})"
    return "?"


def _is_host_data(data: Any) -> bool:
    return not isinstance(data, torch.Tensor)


class _Dispatch(TorchDispatchMode):
    def __init__(self, sink: list[SyncEvent]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = SYNC_OPS.get(func)
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            why = "repeat_interleave without output_size: output shape depends on the data"
        elif func in _INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                why = "boolean-mask indexing: output shape depends on the data"
        elif func in _COPY_OPS:
            why = self._copy(func, args, kwargs)
        if why:
            self.sink.append(SyncEvent(str(func), why, _where()))
        return func(*args, **kwargs)

    @staticmethod
    def _copy(func, args, kwargs) -> str | None:
        if func is aten.copy_.default:
            dst, src = args[0].device, args[1].device
            pinned_src, non_blocking = (
                args[1],
                bool(args[2] if len(args) > 2 else kwargs.get("non_blocking")),
            )
        else:
            src, dst = args[0].device, kwargs.get("device") or args[0].device
            pinned_src, non_blocking = args[0], bool(kwargs.get("non_blocking"))
        dst = torch.device(dst)
        if src.type == dst.type == "cpu" or src == dst:
            return None
        if dst.type == "cpu":
            return f"copy {src} -> host"
        if src.type == "cpu" and not (non_blocking and pinned_src.is_pinned()):
            return f"blocking copy host -> {dst} (use pinned memory and non_blocking=True)"
        return None


class SyncDetector(TorchFunctionMode):
    """Records every call that would synchronise a CUDA stream with the host (see module docstring).

    `events` lists them with the project line that made each; `report()` formats them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[SyncEvent] = []
        self._dispatch = _Dispatch(self.events)

    def __enter__(self) -> SyncDetector:
        super().__enter__()
        self._dispatch.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._dispatch.__exit__(*exc)
        super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _READBACK_FUNCS.get(func)
        if func in _HOST_DATA_FUNCS:
            data = (
                args[1]
                if func is torch.Tensor.new_tensor
                else (args[0] if args else kwargs.get("data"))
            )
            if _is_host_data(data):
                why = "a tensor made from host data (on a device: a blocking host-to-device copy)"
        if (
            func is torch.Tensor.__setitem__
            and len(args) > 2
            and isinstance(args[2], (int, float, bool))
        ):
            why = "t[i] = python number: on a GPU a copy from the host (use t[i].fill_(v))"
        if why:
            self.events.append(SyncEvent(getattr(func, "__qualname__", str(func)), why, _where()))
        return func(*args, **kwargs)

    def clear(self) -> None:
        self.events.clear()

    def report(self) -> str:
        lines = [f"{len(self.events)} host sync(s):"]
        lines += [f"  {e.where}: {e.what} -- {e.why}" for e in self.events]
        return "\n".join(lines)

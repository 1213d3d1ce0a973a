"""The hot path of a training step: the batch, the learning rate and, on CUDA, one captured graph.

:class:`StepRunner` runs ``Trainer._update`` (forward, backward, clipping and AdamW on one batch)
for step ``k`` at learning rate ``lr``. What it changes is where the host waits, not the
arithmetic:

* **Batches** (``perf.batches``): :class:`DeviceBatches` copies the train split to the device
  once and gathers batch ``k`` there from the window starts that ``BatchSampler.starts(k)`` draws
  (so batch ``k`` is still a pure function of the seed and ``k``: exact resume and trunk/branch
  equality hold); per step the host draws 8 bytes per sequence and enqueues one small copy.
  :class:`HostBatches` gathers on the host from the memory-mapped file, as before.
* **CUDA graph** (``perf.cuda_graph``): after ``WARMUP_STEPS`` eager steps (real steps, on a side
  stream, as the PyTorch CUDA-graph recipe asks) the whole update is captured once and replayed
  every later step: no Python, no dynamo guards and no kernel launches on the host per step. The
  learning rate is a device tensor that AdamW reads (``capturable``), filled before each replay;
  the loss and gradient norm are returned as device tensors (read them only when logging). The
  graph is dropped when the parameters, the optimizer or its state change (QAT's quantizer
  scales, a loaded checkpoint: :meth:`StepRunner.reset`) and captured again after new warm-up.
  If capturing fails the run continues eagerly (same arithmetic) with a warning.

The checkpointed optimizer state is the same either way (:meth:`StepRunner.optimizer_state`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from coqat.data import BatchSampler
    from coqat.train.run import Trainer

#: eager steps before a capture (compilation, AdamW state, cuBLAS/cuDNN workspaces happen there)
WARMUP_STEPS = 3
#: perf.cuda_graph = auto captures models below this many parameters (above, the GPU's step time
#: hides the host's per-step work; the graph would only hold its memory pool)
GRAPH_MAX_PARAMS = 60_000_000
#: perf.batches = auto keeps the train split on the device if it takes at most this share of the
#: free device memory
DEVICE_SHARE = 0.25


class HostBatches:
    """Batch ``k`` gathered on the host from the memory-mapped split and copied to the device
    (into one reused buffer, asynchronously from pinned memory)."""

    kind = "host"

    def __init__(self, sampler: BatchSampler, rows: slice, device: torch.device):
        self.sampler, self.rows, self.device = sampler, rows, device
        self.buf: torch.Tensor | None = None

    def load(self, k: int) -> None:
        t = torch.from_numpy(self.sampler.batch(k)[self.rows])
        if self.device.type != "cuda":
            self.buf = t
            return
        if self.buf is None or self.buf.shape != t.shape:
            self.buf = torch.empty(t.shape, dtype=t.dtype, device=self.device)
        self.buf.copy_(t.pin_memory(), non_blocking=True)

    def get(self) -> torch.Tensor:
        """The loaded batch, int64 ``[rows, seq_len + 1]`` on the device."""
        assert self.buf is not None, "load(k) first"
        return self.buf


class DeviceBatches:
    """The train split on the device (int16 when the vocabulary fits, else int32); batch ``k`` is
    gathered there from ``sampler.starts(k)``: equal to ``sampler.batch(k)``, element for
    element. :meth:`get` is device work only, so it can be captured in a CUDA graph."""

    kind = "device"

    def __init__(self, sampler: BatchSampler, rows: slice, device: torch.device):
        self.sampler, self.rows, self.device = sampler, rows, device
        self.tokens = _device_tokens(sampler.dataset, device)
        self.offsets = torch.arange(sampler.seq_len + 1, device=device)
        n = len(range(sampler.batch_size)[rows])
        self.starts = torch.zeros(n, dtype=torch.int64, device=device)

    @staticmethod
    def nbytes(sampler: BatchSampler) -> int:
        ds = sampler.dataset
        return len(ds) * (2 if _fits_int16(ds) else 4)

    def load(self, k: int) -> None:
        st = torch.from_numpy(self.sampler.starts(k)[self.rows])
        if self.device.type == "cuda":
            st = st.pin_memory()
        self.starts.copy_(st, non_blocking=True)

    def get(self) -> torch.Tensor:
        """The loaded batch, int64 ``[rows, seq_len + 1]`` on the device."""
        return self.tokens[self.starts[:, None] + self.offsets].long()


_TOKENS: dict[tuple, torch.Tensor] = {}  # the latest split copied to a device (runs reuse it)


def _device_tokens(ds: Any, device: torch.device) -> torch.Tensor:
    """The split ``ds`` on ``device``; the latest copy is kept for the next run of this process
    (a sweep worker trains many runs on one data folder)."""
    key = (str(ds.path), ds.data_hash, str(device))
    if key not in _TOKENS:
        _TOKENS.clear()
        _TOKENS[key] = torch.from_numpy(np.array(_compact(ds))).to(device)
    return _TOKENS[key]


def _fits_int16(ds: Any) -> bool:
    return ds.tokens.dtype == np.uint16 and ds.vocab_size <= 1 << 15


def _compact(ds: Any) -> np.ndarray:
    """The split's tokens as int16 (a view of uint16 ids below 2^15) or int32."""
    return ds.tokens.view(np.int16) if _fits_int16(ds) else ds.tokens.astype(np.int32)


def use_device_batches(tr: Trainer) -> bool:
    mode = tr.cfg.perf.batches
    if mode != "auto":
        return mode == "device"
    if not tr.cuda:
        return False
    free, _ = torch.cuda.mem_get_info(tr.device)
    return DeviceBatches.nbytes(tr.sampler) <= DEVICE_SHARE * free


def use_cuda_graph(tr: Trainer) -> bool:
    cfg = tr.cfg
    mode = cfg.perf.cuda_graph
    possible = tr.cuda and not tr.dist.enabled and cfg.compile_mode != "reduce-overhead"
    if mode == "off" or not possible:
        return False
    if mode == "on":
        return True
    from coqat.model import param_counts

    return param_counts(cfg.model).total < GRAPH_MAX_PARAMS


class StepRunner:
    """Runs the training steps of one :class:`~coqat.train.run.Trainer` (module doc)."""

    def __init__(self, tr: Trainer, rows: slice):
        # no reference to ``tr`` is kept (no cycle: a finished run's memory goes at once)
        cls = DeviceBatches if use_device_batches(tr) else HostBatches
        self.batches = cls(tr.sampler, rows, tr.device)
        self.graphs = use_cuda_graph(tr)
        self.lr = torch.zeros((), dtype=torch.float32, device=tr.device) if self.graphs else None
        self.last_lr: float | None = None
        self.failed = False  # a capture failed: eager steps from then on
        self.reset()

    def reset(self) -> None:
        """Forget the captured graph: call when parameters, optimizer or optimizer state change."""
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self.warm = 0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def step(self, tr: Trainer, k: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Train ``tr`` on batch ``k`` at learning rate ``lr``; returns (loss, gradient norm) as
        device tensors."""
        self.batches.load(k)
        self.last_lr = lr
        groups = tr.optimizer.param_groups
        if not self.graphs:
            for g in groups:
                g["lr"] = lr
            return tr._update(self.batches.get())
        # every step of a graphed run (warm-up, capture, replays) has AdamW read the learning
        # rate from this device tensor: one arithmetic whichever way a step runs (exact resume)
        assert self.lr is not None
        self.lr.fill_(lr)
        for g in groups:
            g["lr"] = self.lr
            g["capturable"] = tr.cuda
        if self.graph is None and (self.warm < WARMUP_STEPS or self.failed):
            self.warm += 1
            out = self._update(tr) if self.failed else on_side_stream(
                lambda: self._update(tr), tr.device
            )
            return out[0], out[1]
        if self.graph is None:
            try:
                self.graph, self.out = capture(lambda: self._update(tr))
            except Exception as e:  # noqa: BLE001 - the run goes on without graphs
                warnings.warn(
                    f"capturing the training step in a CUDA graph failed ({type(e).__name__}: "
                    f"{e}); this run continues eagerly (perf.cuda_graph=off skips the attempt)",
                    stacklevel=3,
                )
                self.failed = True  # same arithmetic as before (device lr), no more captures
                tr.optimizer.zero_grad(set_to_none=True)
                return self.step(tr, k, lr)
        self.graph.replay()
        out = self.out.clone()  # the graph's output is overwritten by the next replay
        return out[0], out[1]

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """``opt.state_dict()`` with the hyperparameters as an uncaptured step leaves them
        (the learning rate of the last step as a float, ``capturable`` off): a checkpoint does
        not depend on how the step ran, and loads on a CPU."""
        sd = opt.state_dict()
        if self.graphs:
            lr = self.last_lr
            sd["param_groups"] = [
                {**g, "lr": float(g["lr"]) if lr is None else lr, "capturable": False}
                for g in sd["param_groups"]
            ]
        return sd

    def _update(self, tr: Trainer) -> torch.Tensor:
        loss, gnorm = tr._update(self.batches.get())
        return torch.stack([loss.float(), gnorm.float()])


def on_side_stream(fn: Any, device: torch.device) -> Any:
    """``fn()`` on a fresh side stream ordered after (and before) the current stream's work: the
    warm-up steps before a capture (PyTorch's CUDA-graph recipe)."""
    cur = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(cur)
    with torch.cuda.stream(side):
        out = fn()
    cur.wait_stream(side)
    return out


def capture(fn: Any) -> tuple[Any, torch.Tensor]:
    """Capture ``fn`` (device work returning a tensor) in a CUDA graph without running it;
    returns the graph and ``fn``'s output tensor, which every replay overwrites."""
    graph = torch.cuda.CUDAGraph()
    # entering torch.cuda.graph synchronizes and empties the allocator's cache (the warm-up's
    # blocks go back; the graph's private pool takes the step's memory). thread_local: other
    # threads of the process (a sweep worker's heartbeat) may use CUDA without invalidating it
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = fn()
    return graph, out

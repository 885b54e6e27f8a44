"""Multi-device training on ``torch.distributed``.

The solver shards its centers and their coefficients across the ranks of a process
group: rank ``r`` holds a contiguous slice of the centers. Every rank draws the same batches
(same seed), computes the partial predictions of its slice, and one ``all_reduce(SUM)`` per
step sums them; each rank then updates only its own slice. Launch with ``torchrun``::

    # one machine, two processes (GPUs with NCCL, else CPU processes with gloo)
    torchrun --standalone --nproc_per_node=2 examples/distributed.py

    # two machines with 4 GPUs each; run on both, with the first machine's address
    torchrun --nnodes=2 --nproc_per_node=4 --node_rank=<0 or 1> \\
        --rdzv_backend=c10d --rdzv_endpoint=<host0>:29500 examples/distributed.py

and call :func:`init_distributed` at the start of the script; the estimators detect the
initialised process group and shard themselves, on every path (the training points as
centers, or ``n_centers``).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["Communicator", "get_communicator", "init_distributed", "shutdown_distributed"]


class Communicator:
    """The collectives the solver needs, over a process group or within a single process.

    Parameters
    ----------
    group : ProcessGroup, optional
        Defaults to the default group when ``torch.distributed`` is initialised; otherwise the
        communicator is single-process and its collectives are no-ops.
    """

    def __init__(self, group=None):
        self.group = group
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)
        else:
            self.rank, self.world_size = 0, 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice ``[lo, hi)`` of ``n`` rows (sizes differ by at most 1)."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def broadcast_int(self, value: int, device: torch.device) -> int:
        """Rank 0's ``value`` on every rank (used to share a seed)."""
        if not self.is_distributed:
            return int(value)
        buf = torch.tensor([int(value)], dtype=torch.int64, device=device)
        dist.broadcast(buf, src=0, group=self.group)
        return int(buf.item())

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, world_size={self.world_size})"


def get_communicator() -> Communicator:
    """A communicator over the default process group, or a single-process one."""
    return Communicator()


def init_distributed(
    backend: str = "auto", *, timeout_s: float = 600.0
) -> tuple[torch.device, Communicator]:
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Safe
    to call twice; without those variables it sets up nothing and returns the default device.

    Parameters
    ----------
    backend : {"auto", "nccl", "gloo"}
        ``"auto"``: NCCL when CUDA is available (one GPU per local rank), else gloo on CPUs.
    timeout_s : float
        Timeout of collective operations.

    Returns
    -------
    device : torch.device
        This rank's device: ``cuda:LOCAL_RANK`` with NCCL, else the CPU. Pass it to the
        estimator's ``device``.
    communicator : Communicator
    """
    if backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo'; got {backend!r}")
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend='nccl' needs CUDA GPUs; use backend='gloo' on CPUs")
    device = torch.device("cpu")
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            return device, Communicator()
        dist.init_process_group(
            backend=backend, init_method="env://", timeout=timedelta(seconds=timeout_s)
        )
    return device, Communicator()


def shutdown_distributed() -> None:
    """Leave the process group (a no-op when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""torchrun integration: the process group from the environment, gathers, rank-0 writing.

A single process (no torchrun) is the degenerate case: world size 1, every gather an identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_name: str) -> DistContext:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU; override with
    CONCUTMIX_DIST_BACKEND). Without torchrun: a single-process context."""
    if not launched_by_torchrun():
        return DistContext()
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        backend = os.environ.get("CONCUTMIX_DIST_BACKEND", "nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather (same shape on every rank). Backward: each rank receives the SUM over
    ranks of the gradients with respect to its own slice, i.e. the gradient of sum_r loss_r.
    With DDP averaging the parameter gradients, the step then follows mean_r loss_r."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor)
        ctx.rank, ctx.world_size, ctx.rows = rank, world_size, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = torch.empty((ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
        else:  # gloo has no reduce-scatter: all-reduce, keep our slice
            grad = grad.clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            out = grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]
        return out, None, None


def gather_with_grad(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """All ranks' tensors concatenated along dim 0 in rank order (every rank must pass the same
    shape); gradients flow back to each rank's own part."""
    if not ctx.enabled:
        return tensor
    return _GatherWithGrad.apply(tensor, ctx.rank, ctx.world_size)


def gather_no_grad(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if not ctx.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective buffers must live: the current CUDA device for nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when `flag` is true on at least one (a collective: all ranks call it).

    Used for decisions every rank must take together (skip a non-finite step, stop), since a
    rank that leaves the lock-step of DDP's gradient all-reduce hangs the others."""
    if not ctx.enabled:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's `obj` on every rank (picklable objects)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(fn, ctx: DistContext):
    """Run `fn()` on rank 0 only, then share its result with every rank; the other ranks wait.

    When rank 0 fails (UserError, OSError), every rank raises too, instead of waiting in a later
    collective for a process that is gone."""
    from concutmix_cli.errors import UserError

    if not ctx.enabled:
        return fn()
    result, error, failure = None, None, None
    if ctx.is_main:
        try:
            result = fn()
        except (UserError, OSError) as err:
            failure, error = err, str(err)
    error, result = broadcast_object((error, result), ctx)
    if failure is not None:
        raise failure
    if error is not None:
        raise UserError(f"rank 0 failed: {error}")
    return result


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device, *,
               sync_batchnorm: bool = False, find_unused_parameters: bool = False):
    """(model, train_model): DDP around the model under torchrun, else the model itself twice.

    sync_batchnorm converts the BatchNorm layers that normalize over the batch of images (the
    backbone and the projection head g) to SyncBatchNorm; the prototype head g' normalizes over
    the C class rows, which are the same on every rank, so it stays a plain BatchNorm.
    torch's SyncBatchNorm runs on CUDA only. `find_unused_parameters` is needed by the methods
    that leave parameters without gradient (ce and cutmix never use the two heads).
    """
    if not ctx.enabled:
        return model, model
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm:
        if device.type != "cuda":
            from concutmix_cli.errors import UserError

            raise UserError("model.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm has "
                            "no CPU implementation); leave it off on CPU")
        parts = [name for name in ("backbone", "projector") if hasattr(model, name)]
        if parts:
            for name in parts:  # converts the BatchNorm children in place
                setattr(model, name,
                        torch.nn.SyncBatchNorm.convert_sync_batchnorm(getattr(model, name)))
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids,
                                  find_unused_parameters=find_unused_parameters)
    return model, ddp


# ----------------------------------------------------------------------------- sharded evaluation


def shard_batches(num_batches: int, ctx: DistContext) -> range:
    """The evaluation batches of this rank: r, r + G, r + 2G, ... (round robin).

    Whole batches, cut exactly as in a single process, so every sample's prediction is computed
    in the same batch as there and the gathered predictions are bit-identical."""
    return range(ctx.rank, num_batches, ctx.world_size)


def gather_batches(local: torch.Tensor, batch_sizes: list[int], ctx: DistContext) -> torch.Tensor:
    """Reassemble per-batch results sharded by `shard_batches` into the single-process order.

    `local`: this rank's rows, its batches concatenated in order; `batch_sizes`: the sizes of
    all batches (only the last one may be smaller). Each rank's rows are padded to the same
    count for the all-gather; the padding is dropped here. Every rank gets the full tensor."""
    if not ctx.enabled:
        return local
    world = ctx.world_size
    full = batch_sizes[0] if batch_sizes else 0
    pad_rows = -(-len(batch_sizes) // world) * full  # ceil(batches / G) full batches
    device = _comm_device()
    padded = torch.zeros((pad_rows, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    gathered = gather_no_grad(padded, ctx).to(local.device)
    pieces = []
    for b, size in enumerate(batch_sizes):
        start = (b % world) * pad_rows + (b // world) * full
        pieces.append(gathered[start : start + size])
    if not pieces:
        return local[:0]
    return torch.cat(pieces, dim=0)

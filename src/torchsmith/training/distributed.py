"""Scale-out on ``torch.distributed``: the same recipe on one process or many.

Under ``torchrun`` (the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment variables) :func:`setup`
joins the process group (gloo on the CPU, NCCL on GPUs), picks the device by local rank, and the
model is wrapped in ``DistributedDataParallel`` (or sharded with FSDP when the recipe asks).

Collective-safe by construction: every collective here (:func:`all_reduce_sum`,
:func:`gather_objects`, :func:`barrier`, the unused-parameter check) is called by every rank on the
same code path; rank-0-only work (writing files, printing) never contains one, so no rank waits on
a collective another rank will never reach (the classic 30-minute NCCL hang).

Parameters that get no gradient make DDP fail at the *second* step with an opaque message, and the
usual fix, ``find_unused_parameters=True``, costs an extra graph walk every step forever.
:func:`unused_parameters` instead runs one probe forward/backward before training (RNG and buffers
restored afterwards) and the loop names the parameters so the user can freeze them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torchsmith.errors import DistributedError, InputError, RecipeError

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "barrier",
    "elastic_restart",
    "gather_objects",
    "raise_clean",
    "setup",
    "teardown",
    "unused_parameters",
    "wrap_model",
]


@dataclass
class DistContext:
    """Where this process stands: its rank, the world size, its device and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = None
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RecipeError(f"environment variable {name}={value!r}: expected an integer") from None


def elastic_restart() -> bool:
    """True when torchrun restarted this worker after a failure (``TORCHELASTIC_RESTART_COUNT > 0``)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0) > 0


def _pick_device(want: str, local_rank: int) -> Any:
    import torch

    if want == "cpu":
        return torch.device("cpu")
    if want.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RecipeError(f"recipe field 'train.device': {want} asked for, but CUDA is not available")
        return torch.device(want)
    if want == "cuda" and not torch.cuda.is_available():
        raise RecipeError("recipe field 'train.device': cuda asked for, but CUDA is not available")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(recipe: dict) -> DistContext:
    """Read torchrun's environment, join (or reuse) the process group, choose the device."""
    import torch
    import torch.distributed as dist

    from torchsmith.devices import check_device_env

    problems = check_device_env()  # trap 6: a misspelt or late CUDA_VISIBLE_DEVICES does nothing
    if problems:
        raise InputError("; ".join(problems))
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device = _pick_device(recipe["train"]["device"], local_rank)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)
    if world <= 1:
        return ctx
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = recipe["distributed"]["backend"] or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise RecipeError("recipe field 'distributed.backend': nccl needs CUDA devices; use gloo on the CPU")
    if not dist.is_initialized():
        import datetime

        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        timeout = datetime.timedelta(seconds=float(recipe["distributed"].get("timeout", 600)))
        try:
            store = _restart_store(world, timeout)
            if store is not None:
                kwargs["store"] = store
            dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout, **kwargs)
        except Exception as e:  # rendezvous or transport: torch's message is a page of C++ context
            raise DistributedError(
                f"rank {rank} of {world} could not join the {backend} process group at "
                f"{_endpoint()}: {_first_line(e)}; {_RETRY}"
            ) from None
        ctx.owns_group = True
    ctx.backend = dist.get_backend()
    return ctx


def _restart_store(world: int, timeout: Any) -> Any:
    """The process group's store after a torchrun restart on one node: the agent's, under a prefix
    of this restart (None: let torch build it).

    torchrun's agent serves one TCPStore for all its worker groups (``TORCHELASTIC_USE_AGENT_STORE``),
    and torch puts the process group's keys in it without a per-restart prefix, so a restarted
    rank can read a killed peer's gloo address and fail with ``connectFullMesh ... Connection
    refused``. On one node every worker shares the agent's restart count, which makes a prefix all
    ranks agree on; across nodes the agents' counts can differ, so that is left to torch.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or _env_int("GROUP_WORLD_SIZE", 0) != 1:
        return None
    import torch.distributed as dist

    host, port = os.environ.get("MASTER_ADDR"), _env_int("MASTER_PORT", 0)
    if not host or not port:
        return None
    tcp = dist.TCPStore(host, port, world, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"torchsmith/restart_{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}", tcp)


_RETRY = (
    "retry with torchrun --max-restarts=N (workers resume with --resume auto), check that "
    "--rdzv_endpoint (or --master_addr/--master_port) is reachable from every node, or raise "
    "distributed.timeout"
)


def _endpoint() -> str:
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    return f"{host}:{port}" if host else "the rendezvous endpoint (MASTER_ADDR unset)"


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # gloo/c10d messages start with a source location "[../third_party/gloo/...] "; keep what follows
    text = lines[0] if lines else type(e).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return f"{type(e).__name__}: {text}"[:300]


_DIST_WORDS = ("gloo", "nccl", "connection", "connect", "timed out", "timeout", "peer", "socket", "store")


def raise_clean(e: BaseException) -> None:
    """Re-raise a failure of the process group (a peer died, a collective timed out) as one line.

    Errors torchsmith raised on purpose pass through unchanged; so does anything that is not about
    the process group.
    """
    import torch.distributed as dist

    from torchsmith.errors import TorchsmithError

    if isinstance(e, TorchsmithError):
        return
    dist_error = getattr(dist, "DistError", ())
    text = str(e).lower()
    if isinstance(e, dist_error) or (isinstance(e, RuntimeError) and any(w in text for w in _DIST_WORDS)):
        raise DistributedError(
            f"rank {_env_int('RANK', 0)} of {_env_int('WORLD_SIZE', 1)}: the process group failed "
            f"during training: {_first_line(e)}; {_RETRY}"
        ) from None


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` created it."""
    import torch.distributed as dist

    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        ctx.owns_group = False


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor: Any, ctx: DistContext) -> Any:
    """Sum ``tensor`` over ranks in place (a no-op on one process). Every rank must call it."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any, ctx: DistContext) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank. Every rank must call it."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def unused_parameters(model: Any, run_step: Any) -> list[str]:
    """Names of trainable parameters that get no gradient from one probe step.

    ``run_step()`` does a forward and backward on the plain (unwrapped) model. The probe leaves no
    trace: RNG streams, buffers (BatchNorm statistics) and gradients are restored afterwards.
    """
    import torch

    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    with torch.random.fork_rng(devices=[d for d in _cuda_devices(model)]):
        run_step()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n in buffers:
                b.copy_(buffers[n])
    for p in model.parameters():
        p.grad = None
    return names


def _cuda_devices(model: Any) -> list[int]:
    devs = {p.device.index for p in model.parameters() if p.device.type == "cuda"}
    return sorted(d for d in devs if d is not None)


def wrap_model(model: Any, ctx: DistContext, recipe: dict) -> Any:
    """Wrap for data parallelism: DDP (default) or FSDP (``distributed.strategy: fsdp``)."""
    if not ctx.enabled:
        return model
    strategy = recipe["distributed"]["strategy"]
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # pragma: no cover - older torch
            raise RecipeError(
                "recipe field 'distributed.strategy': fsdp needs torch >= 2.6 (fully_shard)"
            ) from None
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(
        model,
        device_ids=ids,
        find_unused_parameters=recipe["distributed"]["find_unused_parameters"],
    )

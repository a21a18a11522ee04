"""Multi-process training under ``torchrun``: process group, rank helpers, batch sharding.

``torchrun --nproc_per_node=N -m pipeline run ...`` starts N copies of the pipeline with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. ``init_from_env()`` joins them in one
process group (once; later calls are no-ops). Without those variables, or with WORLD_SIZE=1,
nothing happens and every helper here answers as for a single process (rank 0 of 1), so the
single-process pipeline is unchanged.

Who does what (see docs/DISTRIBUTED.md):
  * training stages (``Stage.distributed``) run on every rank; ``train.fit`` wraps the model in
    DistributedDataParallel and gives each rank its slice of every global batch (``shard_batches``);
  * every other stage, the cache decision and manifest.json run on rank 0 while the others wait;
  * files are written by rank 0 only (``pipeline.io`` writes are no-ops on other ranks);
  * ranks other than 0 log warnings and errors only.

Backends: gloo for CPU tensors (the training loop runs on CPU), and on a machine with CUDA,
``cpu:gloo,cuda:nccl`` so CUDA tensors go through NCCL. ``POCKETKD_DIST_BACKEND`` overrides.
Waiting for rank 0 (e.g. while it benchmarks on an emulator) uses a separate gloo group whose
timeout is ``POCKETKD_DIST_WAIT_TIMEOUT`` seconds (default 24 h); training collectives keep
``POCKETKD_DIST_TIMEOUT`` (default 1800 s). torchrun stops every rank when one of them fails.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import sys
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

from pipeline.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
OUR_LOGGERS = ("pipeline", "models", "export", "device_bench")

_control = None  # gloo group with a long timeout: waits for rank 0 and object broadcasts
_solo = 0  # > 0 while rank 0 runs something alone (``on_main``): no collectives then


def _dist():
    import torch.distributed as dist

    return dist


def env_world_size() -> int:
    raw = os.environ.get("WORLD_SIZE", "").strip()
    if not raw:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"WORLD_SIZE={raw!r} is not an integer") from None


def _seconds(name: str, default: float) -> timedelta:
    raw = os.environ.get(name, "").strip()
    try:
        return timedelta(seconds=float(raw) if raw else default)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number of seconds") from None


def init_from_env() -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1 (once); returns ``active()``.

    A half-set environment (e.g. WORLD_SIZE without RANK) is a UserError naming what is missing."""
    global _control
    if active():
        return True
    world = env_world_size()
    if world <= 1:
        return False
    missing = [v for v in ENV_VARS if not os.environ.get(v, "").strip()]
    if missing:
        raise UserError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
            "start multi-process runs with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
            "MASTER_PORT), or unset WORLD_SIZE for a single process"
        )
    try:
        rank_, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    except ValueError:
        raise UserError(f"RANK={os.environ['RANK']!r} / LOCAL_RANK={os.environ['LOCAL_RANK']!r} "
                        "must be integers") from None
    if not 0 <= rank_ < world:
        raise UserError(f"RANK={rank_} is outside 0..WORLD_SIZE-1={world - 1}")

    import torch

    dist = _dist()
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; install a build with it, or run one process")
    backend = os.environ.get("POCKETKD_DIST_BACKEND", "").strip()
    if not backend:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_seconds("POCKETKD_DIST_TIMEOUT", 1800))
        atexit.register(shutdown)
    _control = dist.new_group(backend="gloo", timeout=_seconds("POCKETKD_DIST_WAIT_TIMEOUT", 24 * 3600))
    if rank_ != 0:  # one voice: the others speak up only when something is wrong
        for name in OUR_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    log.info("distributed: %d processes, backend %s, rendezvous %s:%s", world, backend,
             os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    return True


def shutdown() -> None:
    """Leave the process group (registered at exit by ``init_from_env``)."""
    global _control
    if active():
        _dist().destroy_process_group()
    _control = None


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    dist = sys.modules.get("torch.distributed")  # not imported yet: certainly not initialised
    return bool(dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def collective() -> bool:
    """True when every rank is here together: ``active()`` and not inside ``on_main`` on rank 0.

    ``train.fit`` uses DDP, and ``all_reduce_*`` reduce, only then; inside a stage that runs on rank 0
    alone they behave as for a single process (the other ranks are waiting, not training)."""
    return _solo == 0 and active()


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or a single process: the one that writes files, logs and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (long timeout: rank 0 may be busy with a long stage)."""
    if collective():
        _dist().barrier(group=_control)


def broadcast(obj: T = None, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank (any picklable object); identity for one process."""
    if not collective():
        return obj
    box = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src, group=_control)
    return box[0]


def gather(obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank; ``[obj]`` for one process."""
    if not collective():
        return [obj]
    out: list = [None] * world_size()
    _dist().all_gather_object(out, obj, group=_control)
    return out


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"on rank 0: {type(exc).__name__}: {exc}")


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank; the others wait. When ``fn``
    raises, every rank raises the same error (so every process exits with the same code)."""
    global _solo
    if not collective():  # one process, or already alone on rank 0
        return fn()
    if is_main():
        _solo += 1
        try:
            out = fn()
        except Exception as exc:
            _solo -= 1
            broadcast((False, _picklable(exc)))
            raise
        _solo -= 1
        broadcast((True, out))
        return out
    ok, out = broadcast()
    if not ok:
        raise out
    return out


def all_reduce_sum(value):
    """The sum over ranks of a number or a tensor (a new value; float64 for numbers); identity for one process.

    For per-rank bookkeeping inside training, e.g. how many samples took part in an epoch."""
    if not collective():
        return value
    import torch

    if isinstance(value, torch.Tensor):
        out = value.detach().clone()
        _dist().all_reduce(out)
        return out
    t = torch.tensor(float(value), dtype=torch.float64)
    _dist().all_reduce(t)
    return type(value)(t.item()) if isinstance(value, int) else t.item()


def all_reduce_mean_weighted(total: float, count: float) -> tuple[float, float]:
    """(sum of totals, sum of counts) over ranks, in float64, in one collective."""
    if not collective():
        return total, count
    import torch

    t = torch.tensor([float(total), float(count)], dtype=torch.float64)
    _dist().all_reduce(t)
    return float(t[0]), float(t[1])


def shard_batches(perm, batch_size: int, rank_: int, world: int) -> Iterator:
    """Rank ``rank_``'s row indices of each global batch of the permutation ``perm``.

    The global batches are exactly those of one process (``perm[i : i + batch_size]``), so all ranks
    take the same number of steps and each epoch covers every sample once. Each global batch is cut
    into ``world`` contiguous parts whose sizes differ by at most one; a global batch with fewer rows
    than ranks (a tiny last batch) is padded by repeating its rows, DistributedSampler-style, so no
    rank ever gets an empty batch."""
    n = perm.shape[0]
    for i in range(0, n, batch_size):
        idx = perm[i : i + batch_size]
        if idx.shape[0] < world:
            idx = idx.repeat((world + idx.shape[0] - 1) // idx.shape[0])[:world]
        yield idx.tensor_split(world)[rank_]


def shard_rows(n: int, rank_: int, world: int) -> slice:
    """Rank ``rank_``'s contiguous slice of ``n`` rows (sizes differ by at most one; may be empty)."""
    start, extra = divmod(n, world)
    lo = rank_ * start + min(rank_, extra)
    return slice(lo, lo + start + (1 if rank_ < extra else 0))

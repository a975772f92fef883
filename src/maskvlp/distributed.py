"""torch.distributed set-up from the environment: torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or Slurm
(SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT set by the launcher)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_variables(environ: dict[str, str] | None = None) -> DistEnv:
    e = os.environ if environ is None else environ
    if "WORLD_SIZE" in e:
        return DistEnv(int(e.get("RANK", 0)), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)))
    if "SLURM_NTASKS" in e and "MASTER_ADDR" in e:
        return DistEnv(int(e.get("SLURM_PROCID", 0)), int(e["SLURM_NTASKS"]), int(e.get("SLURM_LOCALID", 0)))
    return DistEnv()


_GROUP_MADE_HERE = False  # whether init_distributed made the process group (close_distributed ends only that one)


def init_distributed(env: DistEnv | None = None) -> tuple[DistEnv, torch.device]:
    """Initialise the process group when world_size > 1 (nccl on GPU, gloo on CPU); pick the device."""
    global _GROUP_MADE_HERE
    env = env or env_from_variables()
    if torch.cuda.is_available():
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if env.world_size > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError("world size > 1 but MASTER_ADDR/MASTER_PORT are not set: launch with torchrun or Slurm")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank, world_size=env.world_size)
        _GROUP_MADE_HERE = True
    return env, device


def close_distributed() -> None:
    """Destroy the process group init_distributed made, once no rank has a collective left (every rank
    calls it). Left alive, gloo's threads outlive the interpreter and a rank that finished can abort at exit
    (SIGABRT, "terminate called without an active exception"). Not called when one rank failed alone:
    its peers may still wait in a collective."""
    global _GROUP_MADE_HERE
    if _GROUP_MADE_HERE and dist.is_initialized():
        dist.destroy_process_group()
    _GROUP_MADE_HERE = False


def placement(env: DistEnv) -> dict[str, Any]:
    """Which host ran each rank (gathered from every rank: call it on all of them) and the rendezvous
    address, for the run's record: {"ranks": [{"rank", "local_rank", "host"}, ...], "master": "addr:port"}."""
    me = {"rank": env.rank, "local_rank": env.local_rank, "host": socket.gethostname()}
    if env.world_size == 1 or not dist.is_initialized():
        return {"ranks": [me]}
    ranks: list[Any] = [None] * env.world_size
    dist.all_gather_object(ranks, me)
    return {"ranks": ranks, "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"}


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (so all ranks stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

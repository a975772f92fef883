"""2-process gloo DDP gives the same loss and gradients as 1 process on the doubled batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from maskvlp.loss import clip_loss, distributed_clip_loss
from maskvlp.model import CLIP

pytestmark = pytest.mark.slow
SHAPE = dict(vision="tiny", text="tiny", image_size=16, patch_size=4, embed_dim=16, context_length=8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, local_loss, state, batch, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = CLIP(**SHAPE)
    model.load_state_dict(state)
    ddp = DistributedDataParallel(model)
    images, tokens, keep = batch
    n = images.shape[0] // world
    part = slice(rank * n, (rank + 1) * n)
    img, txt, scale = ddp(images[part], tokens[part], keep[part])
    loss = distributed_clip_loss(img, txt, scale, local_loss)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    torch.save({"loss": loss.detach(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("local_loss", [False, True])
def test_two_rank_ddp_equals_one_process_with_the_doubled_batch(tmp_path, local_loss):
    torch.manual_seed(0)
    model = CLIP(**SHAPE)
    images = torch.randn(8, 3, 16, 16)
    tokens = torch.randint(1, 49000, (8, 8))
    tokens[:, -1] = 49407
    keep = torch.stack([torch.randperm(16)[:8].sort().values for _ in range(8)])
    img, txt, scale = model(images, tokens, keep)
    loss = clip_loss(img, txt, scale)
    loss.backward()

    mp.spawn(
        _worker,
        args=(2, _free_port(), local_loss, model.state_dict(), (images, tokens, keep), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    losses = torch.stack([r["loss"] for r in ranks])
    if local_loss:  # each rank holds its own rows; their mean is the global loss
        torch.testing.assert_close(losses.mean(), loss.detach(), atol=1e-5, rtol=1e-5)
    else:  # every rank computes the global loss
        torch.testing.assert_close(losses, loss.detach().expand(2), atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        for r in ranks:  # DDP leaves the averaged (identical) gradient on every rank
            torch.testing.assert_close(r["grads"][name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------ feature-cache accumulation
def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g)
    tokens = torch.randint(1, 49000, (n, 8), generator=g)
    tokens[:, -1] = 49407
    keep = torch.stack([torch.randperm(16, generator=g)[:8].sort().values for _ in range(n)])
    return images, tokens, keep


def _micros(images, tokens, keep, k):
    n = images.shape[0] // k
    return [(images[i * n : (i + 1) * n], tokens[i * n : (i + 1) * n], keep[i * n : (i + 1) * n]) for i in range(k)]


@pytest.mark.parametrize("k", [2, 4])
def test_cached_accumulation_equals_one_big_batch(k):
    """k micro-batches of B with the feature cache = one step on k*B: loss and every gradient."""
    from maskvlp.accumulate import cached_backward, per_micro_backward

    torch.manual_seed(0)
    big, acc = CLIP(**SHAPE), CLIP(**SHAPE)
    acc.load_state_dict(big.state_dict())
    images, tokens, keep = _data(8)
    img, txt, scale = big(images, tokens, keep)
    loss = clip_loss(img, txt, scale)
    loss.backward()
    acc_loss = cached_backward(acc, _micros(images, tokens, keep, k))
    torch.testing.assert_close(acc_loss, loss.detach(), atol=1e-6, rtol=1e-6)
    for (name, p), q in zip(big.named_parameters(), acc.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-5, msg=name)  # fp32 summation order
    # the per-micro-batch mode is a different (smaller-batch) objective, and says so
    micro = CLIP(**SHAPE)
    micro.load_state_dict(big.state_dict())
    micro_loss = per_micro_backward(micro, _micros(images, tokens, keep, k))
    assert not torch.allclose(micro_loss, loss.detach(), atol=1e-3)


def _accum_worker(rank, world, port, state, batch, k, out_dir):
    from maskvlp.accumulate import cached_backward

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = CLIP(**SHAPE)
    model.load_state_dict(state)
    ddp = DistributedDataParallel(model)
    images, tokens, keep = batch
    n = images.shape[0] // world
    part = slice(rank * n, (rank + 1) * n)
    loss = cached_backward(ddp, _micros(images[part], tokens[part], keep[part], k), no_sync=ddp.no_sync)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_rank_cached_accumulation_equals_one_process_with_the_whole_batch(tmp_path):
    """2 ranks x accumulation 2 x micro-batch 2 = one process on the 8 samples: DDP's no_sync for all
    but the last backward, features gathered across ranks in every one."""
    torch.manual_seed(0)
    model = CLIP(**SHAPE)
    images, tokens, keep = _data(8, seed=1)
    img, txt, scale = model(images, tokens, keep)
    loss = clip_loss(img, txt, scale)
    loss.backward()
    mp.spawn(
        _accum_worker,
        args=(2, _free_port(), model.state_dict(), (images, tokens, keep), 2, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(r["grads"][name], p.grad, atol=1e-5, rtol=1e-4, msg=name)

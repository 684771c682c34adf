"""CMSC negatives come from every worker: with two real gloo processes, the summed loss and each
worker's gradients equal those of one process holding the whole batch. ``cmsc_loss`` is a mean
over the worker's pairs; like the criterion (which scales it by the worker's sample size before
fairseq sums over workers), each worker weights it by its number of pairs here."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fairseq_ecg.criterions.wav2vec2_cmsc import cmsc_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _full_batch():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    return first, second, torch.tensor([0, 1, 2, 3, 4, 4])  # pairs 4 and 5: the same patient


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    first, second, groups = _full_batch()
    # Uneven shards (4 + 2 pairs) exercise the padding of the gather.
    rows = slice(0, 4) if rank == 0 else slice(4, 6)
    local_first = first[rows].clone().requires_grad_(True)
    local_second = second[rows].clone().requires_grad_(True)
    loss, correct, count = cmsc_loss(local_first, local_second, groups[rows], temperature=0.1)
    loss = loss * (count // 2)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    results[rank] = (total.item(), local_first.grad.clone(), local_second.grad.clone(), count)
    dist.destroy_process_group()


def test_two_workers_equal_one_worker_with_the_whole_batch():
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)

    first, second, groups = _full_batch()
    first.requires_grad_(True)
    second.requires_grad_(True)
    loss, _, count = cmsc_loss(first, second, groups, temperature=0.1)
    loss = loss * 6
    loss.backward()

    assert abs(results[0][0] - loss.item()) < 1e-4 and abs(results[1][0] - loss.item()) < 1e-4
    assert results[0][3] + results[1][3] == count == 12
    assert torch.allclose(torch.cat([results[0][1], results[1][1]]), first.grad, atol=1e-5)
    assert torch.allclose(torch.cat([results[0][2], results[1][2]]), second.grad, atol=1e-5)

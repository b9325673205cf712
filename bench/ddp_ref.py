"""PyTorch reference for bench/ddp.sh: the GPT of bench/gpt_step_ref.py trained with PyTorch's
DistributedDataParallel on local Gloo processes, as plexus's strategies/ddp trains it: the same
shapes, AdamW with decay on matrices only, clipping at 1.0, buckets of the same size, one intra-op
thread per process. DDP at its best on the CPU: gradients as views of the buckets (no copy out),
gradients set to None between steps, foreach AdamW.

Prints `reference tokens_per_s=<job tokens/s over the timed steps>` (the sum over ranks).
    python3 bench/ddp_ref.py --ranks 2 --layers 4 --width 256 --heads 4 --seq 128 --batch 8 --vocab 4096
"""
import argparse
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt_step_ref import Gpt, adamw, update  # noqa: E402  (the single-process reference's model and step)


def worker(rank, args, port, results):
    torch.set_num_threads(args.threads)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    torch.manual_seed(0)
    model = Gpt(args.vocab, args.layers, args.width, args.heads, args.seq)
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb,
                                                    gradient_as_bucket_view=True)
    opt = adamw(model)
    generator = torch.Generator().manual_seed(1 + rank)  # each rank its own rows
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=generator)

    def step():
        logits = ddp(ids[:, :-1])
        return update(F.cross_entropy(logits.reshape(-1, args.vocab), ids[:, 1:].reshape(-1)), model, opt)

    for _ in range(args.warmup):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        results.put(args.ranks * args.steps * args.batch * args.seq / elapsed)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("ranks", 2), ("layers", 4), ("width", 256), ("heads", 4), ("seq", 128), ("batch", 8),
                          ("vocab", 4096), ("steps", 20), ("warmup", 3), ("threads", 1)]:
        ap.add_argument("--" + name, type=int, default=default)
    ap.add_argument("--bucket-mb", type=float, default=4.0, help="DDP bucket size in MiB (plexus's default)")
    args = ap.parse_args()
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(args, free_port(), results), nprocs=args.ranks, join=True)
    print(f"reference tokens_per_s={results.get():.1f} ranks={args.ranks} torch={torch.__version__}", flush=True)


if __name__ == "__main__":
    main()

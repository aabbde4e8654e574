"""One rank of two over gloo: collectives, then the end of the script, with ``end_process_group_at_exit`` or not.

    python tests/helpers/gloo_exit.py RANK PORT ended|left

Its last words, from the first exit handler registered (so the last to run): ``group at exit: False`` once the
group has been destroyed. Without that, torch's gloo threads can abort the interpreter's exit (SIGABRT, "terminate
called without an active exception") after the work is done; :mod:`test_fsdp` runs pairs of this script.
"""

from __future__ import annotations

import atexit
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lightning_smart.sharding import end_process_group_at_exit


def work(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    gathered = [torch.empty(1000) for _ in range(2)]
    for _ in range(20):
        dist.all_gather(gathered, torch.full((1000,), float(rank)))
        dist.all_reduce(torch.ones(1000))


if __name__ == "__main__":
    rank, port, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    atexit.register(lambda: print(f"group at exit: {dist.is_initialized()}", flush=True))
    work(rank, port)
    if how == "ended":
        assert end_process_group_at_exit() and end_process_group_at_exit()  # twice: still one destroy at exit

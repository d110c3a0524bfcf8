"""Load a `--format dcp` output as an FSDP2 job does: 2 gloo processes, every tensor of a fresh
model's `state_dict()` a DTensor sharded on dim 0 (stacked experts split by expert) or on its
last dim, filled by `torch.distributed.checkpoint.load`; each rank checks the whole tensors
against `from_pretrained` of the safetensors output. Run by tests/test_dcp_moe.py:
`python dcp_sharded_load.py DCP_DIR SAFETENSORS_DIR`; exits non-zero when a rank fails."""

from __future__ import annotations

import gc
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import transformers
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor


def worker(rank: int, world: int, out_dcp: str, out_st: str, store: str) -> None:
    # a file store, not one served by rank 0: a rank still tearing down its group never talks
    # to a server in a process that may have exited (once, under load, rank 1 aborted after
    # loading its weights; the cause is not proven to be this)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    want = transformers.AutoModelForCausalLM.from_pretrained(out_st).state_dict()
    config = transformers.AutoConfig.from_pretrained(out_st)
    for dim in ("first", "last"):
        fresh = transformers.AutoModelForCausalLM.from_config(config).state_dict()
        state = {
            n: distribute_tensor(
                t.detach().clone(), mesh, [Shard(0 if dim == "first" else t.dim() - 1)]
            )
            for n, t in fresh.items()
        }
        dcp.load(state, checkpoint_id=out_dcp)
        for n, t in want.items():
            assert torch.equal(state[n].full_tensor(), t), (dim, n)
        del state
    # Checked. What is left is torch's teardown: twice (rank 1, then rank 0 in a fresh clone's
    # full suite) a rank aborted here after its checks ("terminate called without an active
    # exception"), as gloo's worker threads can when the interpreter is finalized while they
    # still hold tensors (pytorch/pytorch#179291). So the tensors go and the group is destroyed
    # while the interpreter is whole, and the process ends without finalizing it.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        mp.spawn(worker, args=(2, sys.argv[1], sys.argv[2], store), nprocs=2)

"""Makes the DCP checkpoints the DCP tests read (run as a script: `python dcp_fixture.py ROOT`).

A tiny Llama (biases on; vocab 37, so the embedding and LM head split unevenly: 19 + 18 rows)
is saved the way training jobs save it:

- `ROOT/gloo-fp32/` and `ROOT/gloo-bf16/`: a 2-process gloo job (rank 0 this process, rank 1
  a `spawn`ed one), every tensor a DTensor `Shard(0)` on a CPU device mesh,
  `dcp.save({"model": sd, "step": 100})`;
- `ROOT/gloo-cols/`: the fp32 tensors split by their last dimension (`Shard(-1)`) instead;
- `ROOT/single-fp32/`: `format_utils.torch_save_to_dcp` of `torch.save({"model": sd, ...})`;
- `ROOT/expected-fp32.safetensors`, `ROOT/expected-bf16.safetensors`: the same tensors, whole;
- `ROOT/config.json`: the model's config (for `from_pretrained`).

A child process, not a fixture function: `spawn` and gloo want a process of their own."""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file


def config():  # type: ignore[no-untyped-def]
    import transformers

    return transformers.LlamaConfig(
        vocab_size=37,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        attention_bias=True,
        mlp_bias=True,
    )


def state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config())
    with torch.no_grad():  # biases are zero at init: make them visible to "*.bias=zeros"
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    return {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}


def worker(rank: int, world: int, root: str, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank that died leaves the other waiting: 5 minutes (a loaded machine), not half an hour
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    mesh = init_device_mesh("cpu", (world,))
    for tag in ("fp32", "bf16"):
        whole = load_file(os.path.join(root, f"expected-{tag}.safetensors"))
        sd = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in whole.items()}
        dcp.save({"model": sd, "step": 100}, checkpoint_id=os.path.join(root, f"gloo-{tag}"))
    whole = load_file(os.path.join(root, "expected-fp32.safetensors"))  # 2-D tensors by columns
    sd = {k: distribute_tensor(v, mesh, [Shard(v.dim() - 1)]) for k, v in whole.items()}
    dcp.save({"model": sd, "step": 100}, checkpoint_id=os.path.join(root, "gloo-cols"))
    dist.barrier()
    dist.destroy_process_group()


def gloo_job(root: str) -> None:
    """Rank 0 here, rank 1 in a spawned process: one torch import fewer than two spawned ranks
    (this process has torch already), the same job."""
    port = free_port()
    other = mp.get_context("spawn").Process(target=worker, args=(1, 2, root, port), daemon=True)
    other.start()
    try:
        worker(0, 2, root, port)
    finally:
        other.join(timeout=120)
    if other.exitcode != 0:
        raise SystemExit(f"rank 1 of the gloo job ended with {other.exitcode}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(root: Path) -> None:
    from torch.distributed.checkpoint.format_utils import torch_save_to_dcp

    root.mkdir(parents=True, exist_ok=True)
    for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        save_file(state(dtype), root / f"expected-{tag}.safetensors")
    gloo_job(str(root))
    torch.save({"model": state(torch.float32), "step": 100}, root / "single.pt")
    torch_save_to_dcp(root / "single.pt", root / "single-fp32")
    (root / "single.pt").unlink()
    config().to_json_file(root / "config.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""How tests/golden/deepspeed/moe-* was made (not run by the tests; needs DeepSpeed, not a
reinit dependency): DeepSpeed 0.19.8 on CPU (2 processes, gloo, torch.optim.AdamW over
DeepSpeed's MoE parameter groups, one training step) saves a tiny model with one DeepSpeed-MoE
layer (4 experts, top-1) as `engine.save_checkpoint` writes it, beside its ranks' files:
`layer_0_expert_{E}_mp_rank_00_model_states.pt`, and `expp_rank_{R}_...optim_states.pt`
without ZeRO. For ep_size 1 it also keeps DeepSpeed's own fp32 master weights
(`deepspeed.utils.safe_get_full_fp32_param` of every parameter, on rank 0) as
`OUT_DIR.fp32.safetensors`: DeepSpeed's `zero_to_fp32` cannot be the reference here, it
refuses the expert files ("... is not a model state checkpoint"). `--align` sets ZeRO's
`parameter_alignment` (each parameter padded to 16 bytes in the flat partitions).

    python make_moe.py STAGE EP_SIZE OUT_DIR [--align]   # keep OUT_DIR/latest, global_step1/*.pt
    python make_moe.py STAGE EP_SIZE OUT_DIR --from DIR  # load DIR's module first
"""

import os
import sys

import torch
import torch.multiprocessing as mp


def build(ep):
    from deepspeed.moe.layer import MoE

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(4, 8)
            mlp = torch.nn.Sequential(
                torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8)
            )
            self.moe = MoE(hidden_size=8, expert=mlp, num_experts=4, ep_size=ep, k=1)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x):
            h, _, _ = self.moe(self.inp(x))
            return self.out(h)

    return Net()


def work(rank, world, stage, ep, out, src, align, port):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        DS_ACCELERATOR="cpu",
    )
    import deepspeed
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
    from safetensors.torch import save_file

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = build(ep)
    for i, e in enumerate(model.moe.deepspeed_moe.experts.deepspeed_experts):
        for p in e.parameters():  # DeepSpeed copies one expert: make each local expert differ
            p.data.add_(0.01 * (rank * 4 + i))
    groups = split_params_into_different_moe_groups_for_optimizer(
        {"params": list(model.parameters()), "name": "p"}
    )
    opt = torch.optim.AdamW(groups, lr=1e-2)
    ds = {"train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True}
    if stage > 0:
        zero = {"stage": stage, "parameter_alignment": align}
        ds.update(zero_optimization=zero, bf16={"enabled": True})
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    if src:
        engine.load_checkpoint(src, load_module_only=True)
    x = torch.randn(2, 6, 4).to(engine.module.inp.weight.dtype)
    engine.backward(engine(x).float().pow(2).mean())
    engine.step()
    engine.save_checkpoint(out, tag="global_step1")
    if ep == 1 and stage > 0:
        fp32 = {
            n: deepspeed.utils.safe_get_full_fp32_param(p).contiguous()
            for n, p in engine.module.named_parameters()
        }
        if rank == 0:
            save_file(fp32, out.rstrip("/") + ".fp32.safetensors")


if __name__ == "__main__":
    stage, ep, out, rest = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    src = rest[rest.index("--from") + 1] if "--from" in rest else None
    align = "--align" in rest
    mp.spawn(work, args=(2, stage, ep, out, src, align, 29650 + stage * 10 + ep), nprocs=2)

"""How tests/golden/deepspeed/autoep-* was made (not run by the tests; needs DeepSpeed and
transformers 5.15 — DeepSpeed 0.19.8's AutoEP fails on 5.25's output recorders): DeepSpeed
0.19.8 on CPU (2 processes, gloo, bf16, its AdamW as torch's, one training step) replaces a
tiny Mixtral's MoE blocks with its AutoEP layers (`expert_parallel` in the config: the experts
become stacked `mlp.experts.w1/w2/w3` [E, ...], the router `mlp.router.gate`) and saves it.
For ep_size 1 it also keeps DeepSpeed's own fp32 master weights
(`deepspeed.utils.safe_get_full_fp32_param` of every parameter) as `OUT_DIR.fp32.safetensors`.

    python make_autoep.py STAGE EP_SIZE OUT_DIR   # then keep OUT_DIR/latest, global_step1/*.pt
"""

import os
import sys

import torch
import torch.multiprocessing as mp


def work(rank, world, stage, ep, out, port):
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
    import transformers
    from safetensors.torch import save_file

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=37,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=16,
    )
    model = transformers.MixtralForCausalLM(cfg)
    ds = {
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": True},
        "expert_parallel": {
            "enabled": True,
            "autoep_size": ep,
            "preset_model": "mixtral",
            "use_grouped_mm": False,
        },
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    x = torch.randint(0, 37, (1, 8))
    engine.backward(engine(input_ids=x, labels=x).loss)
    engine.step()
    engine.save_checkpoint(out, tag="global_step1")
    if ep == 1:
        fp32 = {
            n: deepspeed.utils.safe_get_full_fp32_param(p).contiguous()
            for n, p in engine.module.named_parameters()
        }
        if rank == 0:
            save_file(fp32, out.rstrip("/") + ".fp32.safetensors")


if __name__ == "__main__":
    stage, ep, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    mp.spawn(work, args=(2, stage, ep, out, 29750 + stage * 10 + ep), nprocs=2)

"""How tests/golden/deepspeed/ was made (not run by the tests; needs DeepSpeed, not a reinit
dependency): DeepSpeed 0.19.8 on CPU (2 processes, gloo, bf16, torch.optim.AdamW, one training
step) saves a tiny Llama's ZeRO checkpoint, then DeepSpeed's own `zero_to_fp32`
(`get_fp32_state_dict_from_zero_checkpoint`) gives `zeroN.zero_to_fp32.safetensors`.

    python make.py STAGE OUT_DIR      # then keep OUT_DIR/latest and OUT_DIR/global_step1/*.pt
"""

import os
import sys

import torch
import torch.multiprocessing as mp


def work(rank, world, stage, out, port):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    import deepspeed
    import transformers

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
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
    model = transformers.LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ds = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": True},
        "zero_allow_untested_optimizer": True,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    x = torch.randint(0, 37, (1, 8))
    loss = engine(input_ids=x, labels=x).loss
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(out, tag="global_step1")


if __name__ == "__main__":
    stage, out = int(sys.argv[1]), sys.argv[2]
    mp.spawn(work, args=(2, stage, out, 29600 + stage), nprocs=2)

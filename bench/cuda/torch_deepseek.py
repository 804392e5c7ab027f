"""Decode ms/token of Hugging Face transformers (eager attention, bf16) at the shape
bench_cuda_deepseek times: DeepseekV3ForCausalLM with DeepSeek-R1's dimensions and
num_hidden_layers=2, first_k_dense_replace=1 (one dense layer, one MoE layer: 256 routed experts
top-8 in 8 groups / top-4 groups, 1 shared), the 129280-row embedding and LM head, random weights
made on the GPU. Feeds --context tokens, then times --tokens single-token decode steps (KV cache,
argmax on the device) between CUDA events and prints the median and the 10th / 90th percentiles.

    python3 bench/cuda/torch_deepseek.py [--context 512] [--tokens 64]
"""
import argparse

import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--context", type=int, default=512)
p.add_argument("--tokens", type=int, default=64)
p.add_argument("--layers", type=int, default=2)
a = p.parse_args()

common = dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432,
              moe_intermediate_size=2048, num_hidden_layers=a.layers, num_attention_heads=128,
              num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256,
              routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536,
              qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8,
              topk_group=4, num_experts_per_tok=8, first_k_dense_replace=1, norm_topk_prob=True,
              max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
              attn_implementation="eager")
yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
        "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0}
try:
    cfg = DeepseekV3Config(rope_parameters=yarn, **common)
except TypeError:  # transformers 4.x
    cfg = DeepseekV3Config(rope_theta=10000.0,
                           rope_scaling={k: v for k, v in yarn.items() if k != "rope_theta"},
                           **common)
torch.manual_seed(0)
with torch.device("cuda"):
    model = DeepseekV3ForCausalLM(cfg).to(torch.bfloat16).eval()
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name()}, attn {model.config._attn_implementation}, "
      f"{sum(x.numel() for x in model.parameters()) / 1e9:.2f} B parameters")


@torch.inference_mode()
def decode(ctx, n):
    ids = (torch.arange(ctx, device="cuda") * 7919 + 13) % cfg.vocab_size
    out = model(ids[None], use_cache=True)
    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    ms = []
    for _ in range(n):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        out = model(tok, past_key_values=past, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        e1.record()
        torch.cuda.synchronize()
        ms.append(e0.elapsed_time(e1))
    ms.sort()
    return ms[len(ms) // 2], ms[len(ms) // 10], ms[len(ms) * 9 // 10]


decode(16, 4)  # warm-up
med, p10, p90 = decode(a.context, a.tokens)
print(f"\n| transformers eager bf16, {a.layers} layers, context {a.context} | ms/token (median) "
      f"| p10 | p90 |")
print("| --- | --- | --- | --- |")
print(f"| DeepseekV3ForCausalLM | {med:.3f} | {p10:.3f} | {p90:.3f} |")

"""End-to-end PyTorch anchor on the GPU machine: training steps of a HF LLaMA (the GaLore paper's
presets) with torch AdamW (fused), galore-torch's GaLoreAdamW and GaLoreAdamW8bit (bitsandbytes),
f32 weights (TF32 matmuls if TF32=1) or bf16 weights (DTYPE=bf16); LAYERWISE=1 updates each
parameter in a post-accumulate-grad hook and frees its gradient (galore-torch's per-layer mode,
`torchrun_main.py --optimizer galore_adamw8bit_per_layer`). Prints one JSON line per run: median
train-step ms, optimizer-step ms, peak allocated / reserved bytes, and the device's used memory at the
steps' ends (`device_used_max`: the CUDA context plus the reserve, as NVML counts it).

Usage: python3 hf_anchor.py WHEEL_DIR PRESET BATCH SEQ RANK OUT_JSONL [OPTIMIZERS]
OPTIMIZERS: comma-separated, default adamw,galore (also galore8bit, adamw8bit: bitsandbytes).
WHEEL_DIR holds galore-torch's wheel (and bitsandbytes' for the 8-bit optimizers).

Adapted from the project's shared anchor (shared/tools/hf_anchor.py): the 8-bit and per-layer
variants are added; everything a published figure needs lives in this repository."""
import importlib, json, os, sys, types, zipfile, statistics, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

whl_dir, preset, batch, seq, rank, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
optimizers = (sys.argv[7] if len(sys.argv) > 7 else "adamw,galore").split(",")
site = "/tmp/anchor_site"
os.makedirs(site, exist_ok=True)
for f in os.listdir(whl_dir):
    if f.endswith(".whl"):
        zipfile.ZipFile(os.path.join(whl_dir, f)).extractall(site)
sys.path.insert(0, site)
mod = types.ModuleType("galore_torch"); mod.__path__ = [os.path.join(site, "galore_torch")]; sys.modules["galore_torch"] = mod
GaLoreAdamW = importlib.import_module("galore_torch.adamw").AdamW
torch.backends.cuda.matmul.allow_tf32 = os.environ.get("TF32") == "1"
dtype = torch.bfloat16 if os.environ.get("DTYPE") == "bf16" else torch.float32
layerwise = os.environ.get("LAYERWISE") == "1"
PRESETS = {"60m": (512, 1376, 8, 8), "130m": (768, 2048, 12, 12), "350m": (1024, 2736, 16, 24),
           "1b": (2048, 5461, 32, 24), "7b": (4096, 11008, 32, 32)}
h, i, heads, layers = PRESETS[preset]
dev = torch.device("cuda")
# the device's used memory once the CUDA context exists, before any model (Ember's `measure`
# reports the same as `device_bytes_at_start`)
torch.zeros(1, device=dev); torch.cuda.synchronize()
_free, _total = torch.cuda.mem_get_info()
DEVICE_USED_START = _total - _free


def make_optimizer(name, params_groups):
    if name == "adamw":
        return torch.optim.AdamW(params_groups, lr=1e-3, fused=True)
    if name == "galore":
        return GaLoreAdamW(params_groups, lr=1e-3, no_deprecation_warning=True)
    if name == "galore8bit":
        return importlib.import_module("galore_torch.adamw8bit").AdamW8bit(params_groups, lr=1e-3)
    if name == "adamw8bit":
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(params_groups, lr=1e-3)
    raise ValueError(name)


def groups(model, name, params=None):
    galore = {"rank": rank, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}
    tgt, rest = [], []
    for n, p in model.named_parameters():
        if params is not None and p not in params:
            continue
        (tgt if p.dim() == 2 and ("self_attn" in n or "mlp" in n) else rest).append(p)
    if name.startswith("galore"):
        out = []
        if rest:
            out.append({"params": rest})
        if tgt:
            out.append({"params": tgt, **galore})
        return out
    return [{"params": tgt + rest}]


def run(optim_name):
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_attention_heads=heads, num_key_value_heads=heads,
                      num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=max(seq, 1024),
                      tie_word_embeddings=False, attn_implementation="sdpa")
    # built on the GPU in its dtype (a 7B model initialized on the CPU in f32 takes minutes); the
    # peak counts from here: the weights stay allocated, construction temporaries do not count
    torch.set_default_dtype(dtype)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model = model.to(dev, dtype=dtype)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    if layerwise:
        # one optimizer per parameter, stepped as soon as its gradient is accumulated
        per_param = {}
        for n, p in model.named_parameters():
            per_param[p] = make_optimizer(optim_name, groups(model, optim_name, {p}))

        def hook(p):
            per_param[p].step()
            per_param[p].zero_grad(set_to_none=True)

        for p in model.parameters():
            p.register_post_accumulate_grad_hook(hook)
        opt = None
    else:
        opt = make_optimizer(optim_name, groups(model, optim_name))
    ids = torch.randint(0, 32000, (batch, seq), device=dev)
    train, step, used = [], [], []
    for it in range(13):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.cuda.synchronize(); t1 = time.perf_counter()
        if opt is not None:
            opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); t2 = time.perf_counter()
        if it >= 3:
            train.append((t2 - t0) * 1e3); step.append((t2 - t1) * 1e3)
        # the device's used memory (cudaMemGetInfo: the CUDA context and the caching allocator's
        # reserve, what NVML reports): the figure Ember's `measure` polls
        free, total = torch.cuda.mem_get_info()
        used.append(total - free)
    row = {"what": "hf_" + optim_name + ("_layerwise" if layerwise else ""), "preset": preset, "batch": batch,
           "seq": seq, "rank": rank, "dtype": str(dtype), "tf32": torch.backends.cuda.matmul.allow_tf32,
           "train_step_ms": statistics.median(train),
           "optimizer_step_ms": None if layerwise else statistics.median(step),
           "peak_allocated": torch.cuda.max_memory_allocated(), "peak_reserved": torch.cuda.max_memory_reserved(),
           "device_used_max": max(used), "device_used_start": DEVICE_USED_START,
           "loss_last": float(loss.detach())}
    del model, opt, loss
    return row


with open(out_path, "a") as f:
    for name in optimizers:
        try:
            row = run(name)
        except torch.OutOfMemoryError as e:
            row = {"what": "hf_" + name, "preset": preset, "dtype": str(dtype), "oom": str(e)[:200]}
        except Exception as e:  # a missing wheel (bitsandbytes) is a line in the results, not a stop
            row = {"what": "hf_" + name, "preset": preset, "dtype": str(dtype), "error": repr(e)[:300]}
        print(json.dumps(row), flush=True)
        f.write(json.dumps(row) + "\n")

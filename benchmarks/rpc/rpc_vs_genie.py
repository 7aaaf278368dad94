#!/usr/bin/env python3
# File: benchmarks/rpc/rpc_vs_genie.py
# Genie against PyTorch RPC on one GPU machine, in one run, the same models with the same
# seeded weights:
#   * PyTorch RPC: two processes, torch.distributed.rpc over TensorPipe. The worker owns
#     cuda:0 and holds the model as a remote module (an RRef to an nn.Module built from
#     the state dict export_weights wrote); the client calls it once per BERT batch or per
#     GPT-2 token and reads the result on the host. Two variants: CPU tensors on the wire
#     (the worker moves them to and from cuda:0), and CUDA tensors with a TensorPipe device
#     map (client cuda:0 -> worker cuda:0 and back).
#   * Genie: benchmarks/gpu_benchmark's genie_remote cases (client and a genie-node on
#     cuda:0 over loopback TCP), the same shapes, every result read on the host.
# Prints medians and Genie/RPC ratios; writes rpc_vs_genie.json under --out.
# Precision: fp32 with TF32 off by default. GENIE_RPC_PRECISIONS=fp32,tf32 also runs RPC
# with TF32 matmuls (torch.backends.*.allow_tf32), compared with the Genie cases whose names
# end in _tf32 (gpu_benchmark runs those with TF32 on, local and node alike).
#
#   python3 benchmarks/rpc/rpc_vs_genie.py --pack=device_pack --out=$OUT
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed.rpc as rpc
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


# ---- The models, as examples/models/models.cc defines them (same parameter names) ----
class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask):
        b, s, d = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class BertLayer(nn.Module):
    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.ln1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x, mask):
        h = self.ln1(x + self.attn(x, mask))
        return self.ln2(h + self.fc2(F.gelu(self.fc1(h))))


class BertEncoder(nn.Module):
    def __init__(self, vocab=30522, max_positions=512, dim=768, depth=12, heads=12, ffn=3072):
        super().__init__()
        self.token_embed = nn.Embedding(vocab, dim)
        self.position_embed = nn.Embedding(max_positions, dim)
        self.segment_embed = nn.Embedding(2, dim)
        self.embed_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([BertLayer(dim, heads, ffn) for _ in range(depth)])
        self.register_buffer("position_ids", torch.arange(max_positions))

    def forward(self, ids):
        b, s = ids.shape
        x = self.token_embed(ids) + self.position_embed(self.position_ids[:s]) + self.segment_embed(torch.zeros_like(ids))
        x = self.embed_norm(x)
        mask = ids.ne(0).view(b, 1, 1, s)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class Gpt2Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, positions, mask, keys, values):
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        keys.index_copy_(2, positions, qkv[1])
        values.index_copy_(2, positions, qkv[2])
        y = F.scaled_dot_product_attention(qkv[0], keys, values, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Gpt2Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Gpt2Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)

    def forward(self, x, positions, mask, keys, values):
        h = x + self.attn(self.ln1(x), positions, mask, keys, values)
        return h + self.proj(F.gelu(self.fc(self.ln2(h)), approximate="tanh"))


class Gpt2(nn.Module):
    def __init__(self, vocab=50257, max_positions=1024, dim=768, depth=12, heads=12):
        super().__init__()
        self.max_positions, self.dim, self.depth, self.heads = max_positions, dim, depth, heads
        self.token_embed = nn.Embedding(vocab, dim)
        self.position_embed = nn.Embedding(max_positions, dim)
        self.blocks = nn.ModuleList([Gpt2Block(dim, heads) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(dim)

    def new_cache(self, batch, device):
        shape = (batch, self.heads, self.max_positions, self.dim // self.heads)
        return ([torch.zeros(shape, device=device) for _ in range(self.depth)],
                [torch.zeros(shape, device=device) for _ in range(self.depth)])

    def forward(self, ids, cache, position):
        t = ids.shape[1]
        positions = torch.arange(position, position + t).to(ids.device)
        x = self.token_embed(ids) + self.position_embed(positions)
        key_positions = torch.arange(self.max_positions, device=ids.device)
        allowed = key_positions.view(1, -1).le(positions.view(t, 1))
        mask = torch.zeros(t, self.max_positions, device=ids.device).masked_fill(allowed.logical_not(), float("-inf"))
        for l, block in enumerate(self.blocks):
            x = block(x, positions, mask, cache[0][l], cache[1][l])
        return F.linear(self.final_norm(x), self.token_embed.weight)


def load_dict(path):
    # torch::pickle_save tags the dict's types with a reduce call that weights_only loading
    # refuses; these files were written by export_weights in this same run.
    return dict(torch.load(path, map_location="cpu", weights_only=False))


def load(model, path):
    model.load_state_dict(load_dict(path), strict=True)
    return model.eval()


# ---- The remote modules (they live on the worker) ----
# Where the worker runs the models: cuda:0 (--device=cpu only to try the script out).
DEVICE = os.environ.get("GENIE_RPC_DEVICE", "cuda:0")


# The worker's matmul precision for the next call: "fp32" (TF32 off) or "tf32".
def set_precision(precision):
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"


def grad_off():
    # GENIE_RPC_INFERENCE=1: torch.inference_mode, as the Genie cases that run under
    # c10::InferenceMode; otherwise torch.no_grad, as the ones under NoGradGuard.
    return torch.inference_mode() if os.environ.get("GENIE_RPC_INFERENCE") == "1" else torch.no_grad()


class BertServer:
    def __init__(self, path):
        set_precision("fp32")
        self.model = load(BertEncoder(), path).to(DEVICE)

    def precision(self, precision):
        set_precision(precision)

    @grad_off()
    def forward(self, ids):
        if ids.is_cuda:
            return self.model(ids)
        return self.model(ids.to(DEVICE)).cpu()


class Gpt2Server:
    def __init__(self, path):
        set_precision("fp32")
        self.model = load(Gpt2(), path).to(DEVICE)
        self.reset()

    def reset(self):
        self.cache = self.model.new_cache(1, DEVICE)
        self.length = 0

    @grad_off()
    def step(self, ids, position=-1):
        if position >= 0:
            self.length = position
        on_cuda = ids.is_cuda
        logits = self.model(ids.to(DEVICE), self.cache, self.length)
        self.length += ids.shape[1]
        return logits if on_cuda else logits.cpu()


def median_ms(samples):
    return statistics.median(samples) * 1e3


def precision_suffix(precision):
    return "" if precision == "fp32" else "_" + precision


# The RPC results a gpu_benchmark case compares with: its cases named *_tf32 ran with TF32 on.
def case_suffix(case):
    return precision_suffix("tf32" if case.endswith("_tf32") else "fp32")


# One RPC variant at the worker's current precision: BERT batches and GPT-2 tokens, medians
# into results under rpc_<variant><suffix>_*.
def measure(bert, gpt, variant, suffix, args, results):
    dev = "cuda:0" if variant == "cuda_device_map" else "cpu"
    # BERT-base, batch 8 x 128 (as BM_BertBase).
    ids = torch.randint(1, 30522, (8, 128)).to(dev)
    for _ in range(5):
        bert.rpc_sync().forward(ids).cpu()
    t = []
    for _ in range(args.bert_iters):
        t0 = time.perf_counter()
        bert.rpc_sync().forward(ids).cpu()
        t.append(time.perf_counter() - t0)
    results[f"rpc_{variant}{suffix}_bert_ms"] = median_ms(t)
    # GPT-2 decode per token, static KV cache, 16-token prompt, token 0 (as BM_Gpt2SmallDecode).
    gpt.rpc_sync().reset()
    gpt.rpc_sync().step(torch.zeros(1, 16, dtype=torch.long).to(dev), 0).cpu()
    token = torch.zeros(1, 1, dtype=torch.long).to(dev)
    for _ in range(5):
        gpt.rpc_sync().step(token).cpu()
    t = []
    length = 21
    for _ in range(args.gpt_tokens):
        if length + 1 >= 1024:
            length = 16
        t0 = time.perf_counter()
        gpt.rpc_sync().step(token, length).cpu()
        t.append(time.perf_counter() - t0)
        length += 1
    results[f"rpc_{variant}{suffix}_gpt2_token_ms"] = median_ms(t)
    print(f"[rpc {variant}{suffix}] BERT {results[f'rpc_{variant}{suffix}_bert_ms']:.3f} ms/batch, "
          f"GPT-2 {results[f'rpc_{variant}{suffix}_gpt2_token_ms']:.3f} ms/token", flush=True)


def client(args):
    results = {}
    bert = rpc.remote("worker", BertServer, args=(os.path.join(args.weights, "bert_base.pt"),))
    gpt = rpc.remote("worker", Gpt2Server, args=(os.path.join(args.weights, "gpt2_small.pt"),))

    # Parity with the C++ models (references computed on the CPU by export_weights).
    bref = load_dict(os.path.join(args.weights, "bert_ref.pt"))
    got = bert.rpc_sync().forward(bref["ids"])
    results["bert_max_abs_diff_vs_cpp"] = (got - bref["hidden"]).abs().max().item()
    gref = load_dict(os.path.join(args.weights, "gpt2_ref.pt"))
    diffs = [(gpt.rpc_sync().step(gref["prompt"], 0) - gref["prefill_logits"]).abs().max().item()]
    for s in range(3):
        diffs.append((gpt.rpc_sync().step(torch.zeros(1, 1, dtype=torch.long)) - gref[f"step{s}_logits"]).abs().max().item())
    results["gpt2_max_abs_diff_vs_cpp"] = max(diffs)

    variants = ("cpu_tensors", "cuda_device_map") if DEVICE.startswith("cuda") else ("cpu_tensors",)
    for precision in args.precisions:
        bert.rpc_sync().precision(precision)  # process-wide on the worker: GPT-2 too
        for variant in variants:
            measure(bert, gpt, variant, precision_suffix(precision), args, results)
    return results


def run_rpc(rank, args, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(args.port)
    opts = rpc.TensorPipeRpcBackendOptions(num_worker_threads=16, rpc_timeout=600)
    cuda = DEVICE.startswith("cuda")
    if rank == 0:
        if cuda:
            opts.set_device_map("worker", {0: 0})  # client cuda:0 -> worker cuda:0 (and back)
        rpc.init_rpc("client", rank=0, world_size=2, rpc_backend_options=opts)
        try:
            queue.put(client(args))
        except Exception as e:  # reported by the parent, which must not wait forever
            queue.put({"error": repr(e)})
        finally:
            rpc.shutdown()
    else:
        if cuda:
            opts.set_device_map("client", {0: 0})
        rpc.init_rpc("worker", rank=1, world_size=2, rpc_backend_options=opts)
        rpc.shutdown()


def run_genie(args):
    if args.genie_json:
        # gpu_benchmark's JSON from earlier in the same gpu_all.sh run on this machine.
        with open(args.genie_json) as f:
            out = f.read()
    else:
        cmd = [os.path.join(args.pack, "run.sh"), "gpu_benchmark",
               f"--benchmark_filter=BM_(BertBase|Gpt2SmallDecode)/({args.genie_case.replace(',', '|')})/",
               f"--benchmark_repetitions={args.genie_repetitions}",
               "--benchmark_report_aggregates_only=true", "--benchmark_format=json"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    medians = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("aggregate_name") == "median":
            scale = {"ms": 1.0, "us": 1e-3, "ns": 1e-6}[b["time_unit"]]
            medians[b["run_name"].split("/min_time")[0]] = b["real_time"] * scale
    # One entry per case; the first names genie_bert_ms / genie_gpt2_token_ms.
    out = {"genie_cases": {}}
    for case in args.genie_case.split(","):
        out["genie_cases"][case] = {"bert_ms": medians[f"BM_BertBase/{case}"],
                                    "gpt2_token_ms": medians[f"BM_Gpt2SmallDecode/{case}"]}
    first = out["genie_cases"][args.genie_case.split(",")[0]]
    out["genie_bert_ms"], out["genie_gpt2_token_ms"] = first["bert_ms"], first["gpt2_token_ms"]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pack", default="device_pack")
    p.add_argument("--out", default=".")
    p.add_argument("--weights", default="/tmp/genie_rpc")
    p.add_argument("--port", type=int, default=29517)
    p.add_argument("--bert_iters", type=int, default=100)
    p.add_argument("--gpt_tokens", type=int, default=400)
    p.add_argument("--genie_repetitions", type=int, default=3)
    p.add_argument("--try_on_cpu", action="store_true",
                   help="run the RPC side on the CPU, without Genie (to try the script out)")
    p.add_argument("--skip_export", action="store_true", help="reuse the files under --weights")
    p.add_argument("--genie_case", default="genie_remote",
                   help="gpu_benchmark case(s) standing for Genie, comma-separated (genie_remote, "
                        "genie_remote_inference, ...); the first one fills the ratio fields")
    p.add_argument("--genie_json", default="",
                   help="read Genie's medians from this gpu_benchmark JSON instead of running it")
    args = p.parse_args()
    args.precisions = [x.strip() for x in os.environ.get("GENIE_RPC_PRECISIONS", "fp32").split(",")]
    if any(x not in ("fp32", "tf32") for x in args.precisions):
        p.error(f"GENIE_RPC_PRECISIONS: fp32 and/or tf32, comma-separated, not {args.precisions}")
    if args.try_on_cpu:
        os.environ["GENIE_RPC_DEVICE"] = "cpu"
        global DEVICE
        DEVICE = "cpu"
    os.makedirs(args.weights, exist_ok=True)
    if not args.skip_export:
        subprocess.run([os.path.join(args.pack, "run.sh"), "export_weights", f"--out={args.weights}"], check=True)

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=run_rpc, args=(r, args, queue)) for r in (0, 1)]
    for pr in procs:
        pr.start()
    results = queue.get(timeout=400)
    for pr in procs:
        pr.join(timeout=60)
    if "error" in results:
        print("PyTorch RPC side failed:", results["error"])
        return 1
    if args.try_on_cpu:
        print(json.dumps(results, indent=2))
        return 0
    results.update(run_genie(args))

    # Each Genie case against the best RPC variant of its precision (cases named *_tf32 ran
    # with TF32 on); the first case fills the ratio fields.
    def best_rpc(case, model):
        return min(results[f"rpc_{v}{case_suffix(case)}_{model}"] for v in ("cpu_tensors", "cuda_device_map"))

    first = args.genie_case.split(",")[0]
    ratios_known = f"rpc_cpu_tensors{case_suffix(first)}_bert_ms" in results
    if ratios_known:
        results["ratio_bert_genie_over_rpc"] = results["genie_bert_ms"] / best_rpc(first, "bert_ms")
        results["ratio_gpt2_genie_over_rpc"] = results["genie_gpt2_token_ms"] / best_rpc(first, "gpt2_token_ms")
    with open(os.path.join(args.out, "rpc_vs_genie.json"), "w") as f:
        json.dump(results, f, indent=2)
    if not ratios_known:
        print(f"RPC did not run at the precision of {first} ({'tf32' if case_suffix(first) else 'fp32'}): "
              f"set GENIE_RPC_PRECISIONS to include it (the RPC medians are in rpc_vs_genie.json)")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    print(f"parity of the RPC models with the C++ models: BERT {results['bert_max_abs_diff_vs_cpp']:.2e}, "
          f"GPT-2 {results['gpt2_max_abs_diff_vs_cpp']:.2e} (max abs, GPU vs CPU reference)")
    print("| model | precision | RPC, CPU tensors | RPC, CUDA device map | Genie remote | Genie / best RPC |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case, g in results["genie_cases"].items():
        suffix = case_suffix(case)
        if f"rpc_cpu_tensors{suffix}_bert_ms" not in results:
            print(f"({case}: RPC did not run at this precision; set GENIE_RPC_PRECISIONS)")
            continue
        for label, model in (("BERT-base, batch 8 x 128", "bert_ms"), ("GPT-2-124M decode, per token", "gpt2_token_ms")):
            print(f"| {label} | {'tf32' if suffix else 'fp32'} | {results[f'rpc_cpu_tensors{suffix}_{model}']:.2f} ms | "
                  f"{results[f'rpc_cuda_device_map{suffix}_{model}']:.2f} ms | {g[model]:.2f} ms ({case}) | "
                  f"{g[model] / best_rpc(case, model):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

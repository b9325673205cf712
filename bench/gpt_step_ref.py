"""PyTorch eager reference for bench/gpt_step: the same GPT training step as plexus's
models/gpt + optimizers/adamw + strategies/single (pre-norm blocks, learned positions, tanh GELU,
untied head, AdamW with decoupled decay on matrices only, global-norm clipping at 1.0).

--model llama: the Llama step of models/llama instead, written as Meta's reference code writes
it (github.com/meta-llama/llama, llama/model.py @689c7f26): RMSNorm, rotary embeddings as a
complex multiplication, key/value heads repeated for grouped-query attention, SwiGLU with the
2/3 * 4d width rounded up to 32, no biases, an untied head.

Alone, it prints `reference tokens_per_s=<median over rounds> threads=<torch threads>`:
    python3 bench/gpt_step_ref.py --layers 4 --width 256 --heads 4 --seq 128 --batch 8 --vocab 4096
On a GPU (PyTorch 2.x): --device cuda --dtype bf16 runs the forward under torch.autocast with
F.scaled_dot_product_attention and fused AdamW, the best eager configuration; --compile adds
torch.compile of the model. bench/gpt_step_gpu.sh runs it beside plexus's bench/gpt_step.
With --serve (how bench/gpt_step drives it), it warms up, prints `ready`, then times one round of
--steps steps for every line read on stdin and prints its tokens/s, so that the two sides can be
measured in alternating rounds under the same machine load.
"""
import argparse
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


HAS_SDPA = hasattr(F, "scaled_dot_product_attention")
ROPE_COMPLEX = False  # --rope complex: Meta's complex multiplication (slower on PyTorch 1.13's CPU)


class Layer(nn.Module):
    def __init__(self, d, h, n_layer):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        for lin in (self.qkv, self.fc):
            nn.init.normal_(lin.weight, 0.0, 0.02)
        for lin in (self.proj, self.out):
            nn.init.normal_(lin.weight, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def forward(self, x, mask):
        b, t, d = x.shape
        # unbind along the q/k/v axis, then transpose: the backward stacks the three gradients
        # straight into the projection's layout (permuting first costs a second copy)
        q, k, v = (h.transpose(1, 2) for h in self.qkv(self.ln1(x)).view(b, t, 3, self.h, d // self.h).unbind(2))
        if HAS_SDPA:  # what plexus's compat::causal_attention uses on LibTorch 2.x
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.h) + mask[:t, :t]
            y = torch.softmax(att, dim=-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class RmsNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaLayer(nn.Module):
    def __init__(self, d, h, kv, n_layer, rope):
        super().__init__()
        self.h, self.kv, self.hd = h, kv, d // h
        self.attn_norm, self.mlp_norm = RmsNorm(d), RmsNorm(d)
        self.wq = nn.Linear(d, h * self.hd, bias=False)
        self.wk = nn.Linear(d, kv * self.hd, bias=False)
        self.wv = nn.Linear(d, kv * self.hd, bias=False)
        self.wo = nn.Linear(h * self.hd, d, bias=False)
        hidden = 32 * ((2 * 4 * d // 3 + 31) // 32)
        self.w1, self.w3 = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)
        for lin in (self.wq, self.wk, self.wv, self.w1, self.w3):
            nn.init.normal_(lin.weight, 0.0, 0.02)
        for lin in (self.wo, self.w2):
            nn.init.normal_(lin.weight, 0.0, 0.02 / math.sqrt(2 * n_layer))
        self.rope = rope  # complex [T, hd / 2]: e^(i * position * base^(-2j / hd))

    def rotate(self, x):  # x [B, T, heads, hd]: adjacent pairs rotated by their position's angle
        if ROPE_COMPLEX:  # as Meta's code: pairs as complex numbers
            z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
            return torch.view_as_real(z * self.rope[: x.shape[1], None, :]).flatten(3).type_as(x)
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)  # the same rotation in real arithmetic
        c, s = self.rope.real[: x.shape[1], None, :], self.rope.imag[: x.shape[1], None, :]
        return torch.stack((a * c - b * s, a * s + b * c), -1).flatten(-2)

    def forward(self, x, mask):
        b, t, d = x.shape
        h = self.attn_norm(x)
        q = self.rotate(self.wq(h).view(b, t, self.h, self.hd))
        k = self.rotate(self.wk(h).view(b, t, self.kv, self.hd))
        v = self.wv(h).view(b, t, self.kv, self.hd)
        if self.kv != self.h:  # each key/value head serves h / kv query heads
            k = k.repeat_interleave(self.h // self.kv, dim=2)
            v = v.repeat_interleave(self.h // self.kv, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if HAS_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd) + mask[:t, :t]
            y = torch.softmax(att, dim=-1) @ v
        x = x + self.wo(y.transpose(1, 2).reshape(b, t, d))
        g = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(g)) * self.w3(g))


class Llama(nn.Module):
    def __init__(self, vocab, n_layer, d, h, kv, seq, base=10000.0):
        super().__init__()
        hd = d // h
        inv_freq = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        angles = torch.outer(torch.arange(seq, dtype=torch.float64), inv_freq)
        self.register_buffer("rope", torch.polar(torch.ones_like(angles), angles).to(torch.complex64))
        self.tokens = nn.Embedding(vocab, d)
        nn.init.normal_(self.tokens.weight, 0.0, 0.02)
        self.layers = nn.ModuleList([LlamaLayer(d, h, kv, n_layer, self.rope) for _ in range(n_layer)])
        self.norm = RmsNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        self.register_buffer("mask", torch.full((seq, seq), float("-inf")).triu(1))

    def forward(self, ids):
        x = self.tokens(ids)
        for layer in self.layers:
            x = layer(x, self.mask)
        return self.head(self.norm(x))


def make_model(args):
    if args.model == "llama":
        return Llama(args.vocab, args.layers, args.width, args.heads, args.kv_heads or args.heads, args.seq)
    return Gpt(args.vocab, args.layers, args.width, args.heads, args.seq)


class Gpt(nn.Module):
    def __init__(self, vocab, n_layer, d, h, seq):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(seq, d)
        self.layers = nn.ModuleList([Layer(d, h, n_layer) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.full((seq, seq), float("-inf")).triu(1))

    def forward(self, ids):
        x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x, self.mask)
        return self.head(self.ln(x))


def adamw(model, gpu=False):
    """plexus's AdamW settings: decoupled decay on matrices only; the fastest form each device has."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    extra = {"fused": True} if gpu else {"foreach": True}
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.95), eps=1e-8, **extra)


def update(loss, model, opt):
    """Backward, global-norm clipping at 1.0 and the optimizer step, as plexus's harness does them."""
    opt.zero_grad(set_to_none=True)  # PyTorch 2's default, as plexus: no pass to zero, none to add into
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def build(args, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and hasattr(torch, "set_default_device"):
        with device:  # parameters created on the GPU (a 1.3B model initialized on the CPU takes long)
            model = make_model(args)
    else:
        model = make_model(args).to(device)
    opt = adamw(model, gpu)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    forward = torch.compile(model) if args.compile else model
    autocast_dtype = torch.bfloat16 if args.dtype == "bf16" else None

    def step():
        if autocast_dtype is not None:
            with torch.autocast(device.type, dtype=autocast_dtype):
                logits = forward(ids[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, args.vocab).float(), ids[:, 1:].reshape(-1))
        else:
            logits = forward(ids[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, args.vocab), ids[:, 1:].reshape(-1))
        return update(loss, model, opt)

    for _ in range(args.warmup):
        step()

    def timed_round():
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()  # reads its loss back: the clock stops after the GPU's work
        if gpu:
            torch.cuda.synchronize()
        return args.steps * args.batch * args.seq / (time.perf_counter() - t0)

    return timed_round


def profile(timed_round, args):
    from torch.profiler import profile as torch_profile, ProfilerActivity
    from profile_summary import report  # beside this file
    gpu = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with torch_profile(activities=activities) as prof:
        timed_round()
    if gpu:  # the kernels, by their GPU time
        events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
        time_of = (lambda e: e.self_device_time_total) if hasattr(events[0], "self_device_time_total") \
            else (lambda e: e.self_cuda_time_total)
    else:  # the operators, by their own CPU time
        events = list(prof.key_averages())
        time_of = lambda e: e.self_cpu_time_total
    report([(e.key, time_of(e), e.count) for e in events], args.steps, "kernels" if gpu else "operators (CPU time)")


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("layers", 4), ("width", 256), ("heads", 4), ("seq", 128), ("batch", 8), ("vocab", 4096),
                          ("steps", 5), ("rounds", 7), ("warmup", 3), ("kv-heads", 0)]:
        ap.add_argument("--" + name, type=int, default=default)
    ap.add_argument("--model", default="gpt", choices=["gpt", "llama"])
    ap.add_argument("--rope", default="real", choices=["real", "complex"],
                    help="llama's rotary embeddings: real arithmetic on pairs (the faster here), or complex")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the OpenMP build of OpenBLAS shares them; the pthreads build keeps its own pool)")
    ap.add_argument("--serve", action="store_true", help="time one round per line read on stdin")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: forward under torch.autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--profile", action="store_true",
                    help="after warm-up, profile --steps steps and print where the time goes (GPU kernels on a GPU)")
    args = ap.parse_args()
    global ROPE_COMPLEX
    ROPE_COMPLEX = args.rope == "complex"
    timed_round = build(args, args.threads)
    if args.profile:
        profile(timed_round, args)
        return
    if args.serve:
        print("ready", flush=True)
        for _ in sys.stdin:
            print(f"{timed_round():.1f}", flush=True)
        return
    rates = sorted(timed_round() for _ in range(args.rounds))
    memory = f" peak_gib={torch.cuda.max_memory_allocated() / 2**30:.1f}" if args.device.startswith("cuda") else ""
    print(f"reference tokens_per_s={rates[len(rates) // 2]:.1f} threads={args.threads} torch={torch.__version__}"
          f" compile={int(args.compile)}{memory}", flush=True)


if __name__ == "__main__":
    main()

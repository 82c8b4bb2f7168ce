"""Forward+backward timing and accuracy of ``methods.ot.sinkhorn_divergence`` vs geomloss and POT.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_sinkhorn.py [--sizes 64 128 256 512] [--reps 30]
        [--threads 1] [--device cpu] [--seed 0]

Inputs are PKDOT-shaped (docs/fidelity.md#pkdot-loss): random features z_T, z_S ∈ R^{B×512}, cosine-similarity
matrices minus their global min, per row the k=30 columns least similar to the teacher
(``torch.topk(largest=False, sorted=True)``), gathered from both matrices -> clouds
X_T, X_S ∈ R^{B×30} in float32. ε = 0.01 (blur 0.1). The gradient is taken w.r.t. the student
cloud only, as in PKDOT (the teacher side carries no grad).

Methods (all compute the debiased S_ε = OT_ε(T,S) − ½OT_ε(T,T) − ½OT_ε(S,S), geomloss convention):
  ours            sinkhorn_divergence(X_T, X_S, eps=0.01)   (geomloss-parity ε-scaling, ~11 steps)
  ours tol=1e-6   same, then iterate at ε until max potential change ≤ 1e-6 (converged float32)
  geomloss        SamplesLoss("sinkhorn", p=2, blur=0.1)    (tensorized backend, same schedule)
  POT sinkhorn2   ot.sinkhorn2(a, b, ot.dist(.), reg=2ε, method="sinkhorn_log", log=True) per
                  term, stopThr=1e-6 (1e-9, the default, is below float32 resolution so it would
                  always run numItermax=1000 iterations), autodiff through the iterations. sinkhorn2
                  returns the *linear* cost ⟨P, M⟩; to compare the same quantity the loss is the
                  dual value ε·(⟨a, log u − log a⟩ + ⟨b, log v − log b⟩) = ½·OT_KL(M, 2ε) built
                  from the returned log-potentials (same Sinkhorn work, differentiable).
  POT solve       ot.solve(ot.dist(.), a, b, reg=2ε, reg_type="KL", method="sinkhorn_log",
                  tol=1e-6, grad="envelope"), value/2 per term.

Reference: our solver in float64 with tol=1e-12 (fully converged; at every B it is also checked
against POT float64 ``ot.solve`` with tol=1e-12, printed below the table). Errors are on the
value (abs and relative) and on the gradient w.r.t. X_S (relative L2).
Timings: median over --reps interleaved repetitions after warm-up (the machine is shared, so
methods are alternated within each repetition rather than timed in blocks).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from methods.ot import sinkhorn_divergence

EPS = 0.01
K = 30


def pkdot_clouds(B: int, gen: torch.Generator, d: int = 512, k: int = K) -> tuple[Tensor, Tensor]:
    """Teacher/student anchor clouds [B, k] as built by the PKDOT loss (docs/fidelity.md#pkdot-loss)."""
    zt = torch.randn(B, d, generator=gen, dtype=torch.float64)
    zs = torch.randn(B, d, generator=gen, dtype=torch.float64)

    def shifted_cos(z: Tensor) -> Tensor:
        zn = F.normalize(z, dim=1, eps=1e-8)
        a = zn @ zn.T
        return a - a.min()

    at, as_ = shifted_cos(zt), shifted_cos(zs)
    idx = torch.topk(at, k, dim=1, largest=False, sorted=True).indices
    return at.gather(1, idx), as_.gather(1, idx)



def make_methods(eps: float) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """Each returns the loss value; the caller differentiates it w.r.t. the student cloud."""
    import ot
    from geomloss import SamplesLoss

    geo = SamplesLoss("sinkhorn", p=2, blur=eps**0.5)

    def uniform(p: Tensor) -> Tensor:
        return torch.full((p.shape[0],), 1.0 / p.shape[0], dtype=p.dtype, device=p.device)

    def pot_sinkhorn2_term(p: Tensor, q: Tensor) -> Tensor:
        a, b = uniform(p), uniform(q)
        _, log = ot.sinkhorn2(
            a, b, ot.dist(p, q), 2 * eps, method="sinkhorn_log", numItermax=1000, stopThr=1e-6, log=True
        )
        # dual value of min <P,M> + 2ε KL(P|ab): 2ε(<a, log u - log a> + <b, log v - log b>); halve it.
        return eps * ((a * (log["log_u"] - a.log())).sum() + (b * (log["log_v"] - b.log())).sum())

    def pot_solve_term(p: Tensor, q: Tensor) -> Tensor:
        res = ot.solve(
            ot.dist(p, q), uniform(p), uniform(q), reg=2 * eps, reg_type="KL",
            method="sinkhorn_log", tol=1e-6, grad="envelope",
        )
        return 0.5 * res.value

    def debiased(term: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda x, y: term(x, y) - 0.5 * term(x, x) - 0.5 * term(y, y)

    return {
        "ours": lambda x, y: sinkhorn_divergence(x, y, eps),
        "ours tol=1e-6": lambda x, y: sinkhorn_divergence(x, y, eps, tol=1e-6),
        "geomloss": lambda x, y: geo(x, y),
        "POT sinkhorn2": debiased(pot_sinkhorn2_term),
        "POT solve": debiased(pot_solve_term),
    }


def reference(xt: Tensor, xs: Tensor, eps: float) -> tuple[float, Tensor]:
    x, y = xt.double(), xs.double().requires_grad_()
    s = sinkhorn_divergence(x, y, eps, tol=1e-12, max_iter=100_000)
    (g,) = torch.autograd.grad(s, y)
    return s.item(), g


def pot_check(xt: Tensor, xs: Tensor, eps: float) -> float:
    """Fully converged POT float64 value, to validate the reference independently."""
    import ot

    def term(p: Tensor, q: Tensor) -> float:
        a = torch.full((p.shape[0],), 1.0 / p.shape[0], dtype=torch.float64)
        b = torch.full((q.shape[0],), 1.0 / q.shape[0], dtype=torch.float64)
        res = ot.solve(ot.dist(p, q), a, b, reg=2 * eps, reg_type="KL", method="sinkhorn_log",
                       tol=1e-12, max_iter=100_000)
        return 0.5 * res.value.detach().item()

    x, y = xt.double().cpu(), xs.double().cpu()
    return term(x, y) - 0.5 * term(x, x) - 0.5 * term(y, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = leave torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tabulate import tabulate

    if args.threads > 0:
        torch.set_num_threads(args.threads)  # this script's own process only
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    methods = make_methods(EPS)
    gen = torch.Generator().manual_seed(args.seed)

    rows, checks = [], []
    for B in args.sizes:
        xt64, xs64 = pkdot_clouds(B, gen)
        ref_val, ref_grad = reference(xt64, xs64, EPS)
        pot_val = pot_check(xt64, xs64, EPS)
        checks.append([B, f"{ref_val:.10g}", f"{pot_val:.10g}", f"{abs(ref_val - pot_val) / abs(ref_val):.1e}"])
        xt = xt64.float().to(device)
        xs = xs64.float().to(device).requires_grad_()

        def run(fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
            s = fn(xt, xs)
            (g,) = torch.autograd.grad(s, xs)
            return s, g

        times: dict[str, list[float]] = {m: [] for m in methods}
        results = {}
        for m, fn in methods.items():
            for _ in range(args.warmup):
                results[m] = run(fn)
        for _ in range(args.reps):
            for m, fn in methods.items():
                sync()
                t0 = time.perf_counter()
                run(fn)
                sync()
                times[m].append(time.perf_counter() - t0)

        t_ours = statistics.median(times["ours"])
        s_geo = results["geomloss"][0].item()
        for m in methods:
            s, g = results[m]
            t = statistics.median(times[m])
            err = abs(s.item() - ref_val)
            gerr = ((g.double().cpu() - ref_grad).norm() / ref_grad.norm()).item()
            rows.append([B, m, f"{t * 1e3:.2f}", f"{t_ours / t:.2f}", f"{err:.4e}", f"{err / abs(ref_val):.2e}",
                         f"{gerr:.2e}", f"{abs(s.item() - s_geo) / abs(s_geo):.1e}"])
        print(f"B={B} done", file=sys.stderr)

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, eps {EPS}, k {K}, "
          f"float32 inputs, median of {args.reps} reps")
    print(tabulate(rows, headers=["B", "method", "ms / call (fwd+bwd)", "ours / method", "|S - ref|",
                                  "rel. err", "grad rel. err", "rel. diff to geomloss"], tablefmt="github"))
    print("\nReference check (ours float64 tol=1e-12 vs POT float64 ot.solve tol=1e-12):")
    print(tabulate(checks, headers=["B", "S_ref (ours f64)", "S (POT f64)", "rel. diff"], tablefmt="github"))


if __name__ == "__main__":
    main()

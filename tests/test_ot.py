"""Tests for methods.ot.sinkhorn_divergence against independent computations.

References used:
* POT (float64, plain log-domain Sinkhorn run to convergence, no ε-scaling) for the converged
  value and envelope gradient;
* geomloss ``SamplesLoss("sinkhorn", p=2, blur=sqrt(eps))`` for the default (ε-scaling,
  fixed-schedule) value and autograd gradient;
* closed forms: S(α, α) = 0 and S(α, α + t) = ½|t|² (translation), finite differences.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from methods.ot import cost_matrix, epsilon_schedule, sinkhorn_divergence

F64 = torch.float64
CONVERGED = dict(tol=1e-13, max_iter=50_000)  # float64 "run to convergence" settings


def rand(*shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=F64) * scale).to(dtype)


def pkdot_clouds(B: int, seed: int, k: int = 30, d: int = 512, clusters: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of shifted cosine-similarity matrices gathered at the k least-similar anchors
    (docs/fidelity.md#pkdot-loss).

    ``clusters > 0`` draws features around that many random centres, which spreads the
    similarities (and the clouds) out compared with i.i.d. Gaussian features.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(clusters, 1), d, generator=g, dtype=F64)

    def feats() -> torch.Tensor:
        z = torch.randn(B, d, generator=g, dtype=F64)
        if clusters:
            z = centres[torch.randint(0, clusters, (B,), generator=g)] + 0.7 * z
        return z

    def shifted_cos(z: torch.Tensor) -> torch.Tensor:
        zn = torch.nn.functional.normalize(z, dim=1)
        a = zn @ zn.T
        return a - a.min()

    at, as_ = shifted_cos(feats()), shifted_cos(feats())
    idx = torch.topk(at, k, dim=1, largest=False, sorted=True).indices
    return at.gather(1, idx), as_.gather(1, idx)


# ----------------------------------------------------------------------------------------------
# POT reference.
#
# geomloss / our convention: OT_ε(α,β) = min_{P∈Π(a,b)} <P, C> + ε KL(P | abᵀ) with C = ½‖x−y‖².
# POT: ot.dist(x, y) = M = ‖x−y‖² = 2C (squared Euclidean, no ½), and ot.solve(M, a, b, reg=r,
# reg_type="KL") minimises <P, M> + r KL(P | abᵀ) and returns that minimum (with the KL term) as
# `.value` (`.value_linear` is <P, M> alone). With r = 2ε the objective is exactly 2·(<P,C> + ε KL),
# so the optimal plan is the same and OT_ε = ½ · value. (ot.sinkhorn2 would return only the linear
# term <P, M>, a different quantity.) The divergence is then debiased by hand.
# ----------------------------------------------------------------------------------------------
def pot_ot_eps(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    ot = pytest.importorskip("ot")
    a = torch.full((p.shape[0],), 1.0 / p.shape[0], dtype=p.dtype)
    b = torch.full((q.shape[0],), 1.0 / q.shape[0], dtype=q.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns when it hits max_iter; asserted below instead
        res = ot.solve(ot.dist(p, q), a, b, reg=2 * eps, reg_type="KL", method="sinkhorn_log",
                       max_iter=20_000, tol=1e-12, grad="envelope")
    plan = res.plan.detach()
    marg_err = (plan.sum(1) - a).abs().sum() + (plan.sum(0) - b).abs().sum()
    assert marg_err < 1e-9, f"POT reference did not converge (marginal error {marg_err:.1e})"
    return 0.5 * res.value


def pot_divergence(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return pot_ot_eps(x, y, eps) - 0.5 * pot_ot_eps(x, x, eps) - 0.5 * pot_ot_eps(y, y, eps)


# (B, B', k, eps, spread of the uniform data): chosen so plain Sinkhorn converges quickly in POT,
# and small (4·max(B, B')² < 2048 elements keeps torch's exp() single-threaded, which matters on
# a contended 2-core box).
POT_CASES = [
    (16, 16, 2, 1e-3, 0.1),
    (20, 14, 5, 1e-3, 0.1),
    (22, 18, 4, 1e-3, 0.15),
    (12, 20, 2, 3e-3, 0.2),
    (18, 22, 3, 1e-2, 0.5),
    (20, 20, 8, 3e-2, 0.5),
    (16, 20, 6, 1e-1, 1.0),
]


@pytest.mark.parametrize("B, B2, k, eps, scale", POT_CASES)
def test_value_matches_pot(B: int, B2: int, k: int, eps: float, scale: float) -> None:
    x = rand(B, k, seed=B * 100 + k, scale=scale)
    y = rand(B2, k, seed=B2 * 100 + k + 1, scale=scale)
    ref = pot_divergence(x, y, eps).item()
    ours = sinkhorn_divergence(x, y, eps, **CONVERGED).item()
    assert ref > 0
    assert ours == pytest.approx(ref, rel=1e-6)


def test_value_matches_pot_on_pkdot_clouds() -> None:
    x, y = pkdot_clouds(40, seed=3)
    ref = pot_divergence(x, y, 0.01).item()
    assert sinkhorn_divergence(x, y, 0.01, **CONVERGED).item() == pytest.approx(ref, rel=1e-6)
    # The default (geomloss-parity) schedule is not converged, but must be in the right place.
    assert sinkhorn_divergence(x, y, 0.01).item() == pytest.approx(ref, rel=5e-2)


@pytest.mark.parametrize("B, B2, k, eps, scale", [POT_CASES[1], POT_CASES[4], POT_CASES[6]])
def test_grad_matches_pot(B: int, B2: int, k: int, eps: float, scale: float) -> None:
    x = rand(B, k, seed=B * 100 + k, scale=scale).requires_grad_()
    y = rand(B2, k, seed=B2 * 100 + k + 1, scale=scale).requires_grad_()
    # POT envelope gradient: d value / dM = plan, then autograd through ot.dist into x and y
    # (for OT(x, x) both arguments of ot.dist carry x, giving the full derivative).
    ref_gx, ref_gy = torch.autograd.grad(pot_divergence(x, y, eps), (x, y))
    gx, gy = torch.autograd.grad(sinkhorn_divergence(x, y, eps, **CONVERGED), (x, y))
    for g, r in ((gx, ref_gx), (gy, ref_gy)):
        assert (g - r).norm() <= 1e-6 * r.norm()
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6 * r.abs().max().item())


def test_gradcheck_finite_differences() -> None:
    # The closed-form gradient must be the derivative of the converged value. With the solver
    # converged to ~1e-13, central differences with step 1e-5 are accurate to ~1e-8.
    x = rand(4, 2, seed=11).requires_grad_()
    y = rand(6, 2, seed=12, scale=1.5).requires_grad_()
    fn = lambda a, b: sinkhorn_divergence(a, b, 0.3, **CONVERGED)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-5, atol=1e-7, rtol=1e-5)
    # batched path too (different clouds per problem)
    xb = rand(2, 3, 2, seed=13).requires_grad_()
    yb = rand(2, 4, 2, seed=14, scale=2.0).requires_grad_()
    fnb = lambda a, b: sinkhorn_divergence(a, b, 0.3, **CONVERGED)  # noqa: E731
    assert torch.autograd.gradcheck(fnb, (xb, yb), eps=1e-5, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# geomloss parity (default, fixed ε-schedule).
# ----------------------------------------------------------------------------------------------
GEO_CASES = [  # (B, B', k, eps, scaling, spread)
    (64, 64, 30, 0.01, 0.5, 2.0),
    (40, 57, 5, 1e-3, 0.5, 1.0),
    (33, 20, 3, 0.1, 0.7, 3.0),
    (128, 128, 30, 0.01, 0.5, 2.0),
]


@pytest.mark.parametrize("B, B2, k, eps, scaling, scale", GEO_CASES)
def test_matches_geomloss_float64(B: int, B2: int, k: int, eps: float, scaling: float, scale: float) -> None:
    geomloss = pytest.importorskip("geomloss")
    x = rand(B, k, seed=B + k, scale=scale).requires_grad_()
    y = rand(B2, k, seed=B2 + k + 7, scale=scale).requires_grad_()
    loss = geomloss.SamplesLoss("sinkhorn", p=2, blur=eps**0.5, scaling=scaling, debias=True)
    ref = loss(x, y)
    ref_gx, ref_gy = torch.autograd.grad(ref, (x, y))
    ours = sinkhorn_divergence(x, y, eps, scaling)
    gx, gy = torch.autograd.grad(ours, (x, y))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(gy, ref_gy, rtol=1e-8, atol=1e-12)


def test_matches_geomloss_float32_pkdot() -> None:
    geomloss = pytest.importorskip("geomloss")
    x64, y64 = pkdot_clouds(128, seed=5, clusters=4)
    x, y = x64.float(), y64.float().requires_grad_()
    ref = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.1)(x, y)
    (ref_g,) = torch.autograd.grad(ref, y)
    ours = sinkhorn_divergence(x, y, 0.01)
    (g,) = torch.autograd.grad(ours, y)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref.item(), rel=1e-4)
    assert (g - ref_g).norm() <= 1e-3 * ref_g.norm()


def test_batched_matches_geomloss_batched_with_shared_diameter() -> None:
    geomloss = pytest.importorskip("geomloss")
    x = rand(3, 20, 4, seed=21)
    y = rand(3, 20, 4, seed=22, scale=2.0)
    y[1] *= 3.0  # very different per-problem diameters
    # geomloss uses one bounding box over the whole batch; pass that diameter explicitly.
    pts = torch.cat([x, y], 1).reshape(-1, 4)
    diam = (pts.amax(0) - pts.amin(0)).norm().item()
    ref = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.1)(x, y)
    ours = sinkhorn_divergence(x, y, 0.01, diameter=diam)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------------------------
# Properties.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1e-3, 1e-2, 1e-1])
def test_self_divergence_is_zero(eps: float) -> None:
    x = rand(50, 6, seed=31, scale=2.0)
    assert abs(sinkhorn_divergence(x, x, eps).item()) < 1e-12
    assert abs(sinkhorn_divergence(x, x.clone(), eps, **CONVERGED).item()) < 1e-12
    assert abs(sinkhorn_divergence(x.float(), x.float(), eps).item()) < 1e-5


def test_translation_gives_half_squared_shift() -> None:
    # Closed form: with C = ½‖x−y‖², OT_ε(α, α+t) = OT_ε(α, α) + ½|t|² for every ε (the cross
    # term <P, (x_i − x_j)·t> vanishes on Π(a, a)), so S_ε(α, α+t) = ½|t|² and dS/dy_j = t/B.
    # (Spread 0.3 keeps plain Sinkhorn quick: for a translated copy at small ε/spread² the plan
    # is nearly a permutation and convergence becomes sublinear.)
    x = rand(30, 3, seed=41, scale=0.3).requires_grad_()
    t = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    y = (x.detach() + t).requires_grad_()
    for eps in (1e-2, 3e-2, 0.1):
        s = sinkhorn_divergence(x, y, eps, **CONVERGED)
        gx, gy = torch.autograd.grad(s, (x, y))
        assert s.item() == pytest.approx(0.5 * t.dot(t).item(), rel=1e-9)
        torch.testing.assert_close(gy, (t / 30).expand_as(gy), rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(gx, (-t / 30).expand_as(gx), rtol=1e-7, atol=1e-10)


def test_nonnegative() -> None:
    # S_ε ≥ 0 for the converged divergence (positive kernel argument, Feydy et al. 2019); nearly
    # identical clouds are where a wrong debiasing term would show up as S < 0. (ε is kept
    # ≥ 0.1 here: for near-copies at small ε the plan is almost a permutation and plain Sinkhorn
    # converges slowly.)
    for seed in range(3):
        x = rand(16, 4, seed=100 + seed)
        y = x + 0.05 * rand(16, 4, seed=200 + seed)
        z = rand(20, 4, seed=300 + seed, scale=1.5)
        for eps in (0.1, 0.3):
            assert sinkhorn_divergence(x, y, eps, **CONVERGED).item() >= -1e-12
            assert sinkhorn_divergence(x, z, eps, **CONVERGED).item() > 0
        for eps in (1e-3, 1e-2):
            assert sinkhorn_divergence(x, z, eps).item() > 0


def test_symmetric() -> None:
    x = rand(23, 5, seed=51)
    y = rand(31, 5, seed=52, scale=1.7)
    for eps in (1e-3, 1e-2):
        s_xy = sinkhorn_divergence(x, y, eps).item()
        s_yx = sinkhorn_divergence(y, x, eps).item()
        assert s_xy == pytest.approx(s_yx, rel=1e-12)


def test_batched_equals_loop() -> None:
    n, k = 3, 5
    x = rand(n, 24, k, seed=61)
    y = rand(n, 24, k, seed=62)
    x[0] *= 0.2  # different diameters -> schedules of different lengths in one batch
    y[2] = y[2] * 4.0 + 1.0
    diams = [(torch.maximum(x[i].amax(0), y[i].amax(0)) - torch.minimum(x[i].amin(0), y[i].amin(0))).norm().item()
             for i in range(n)]
    assert len({len(epsilon_schedule(d, 0.01, 0.5)) for d in diams}) > 1  # masking path exercised
    x.requires_grad_()
    y.requires_grad_()
    batched = sinkhorn_divergence(x, y, 0.01)
    assert batched.shape == (n,)
    gx, gy = torch.autograd.grad(batched.sum(), (x, y))
    for i in range(n):
        xi, yi = x[i].detach().requires_grad_(), y[i].detach().requires_grad_()
        si = sinkhorn_divergence(xi, yi, 0.01)
        assert si.dim() == 0
        gxi, gyi = torch.autograd.grad(si, (xi, yi))
        assert batched[i].item() == pytest.approx(si.item(), rel=1e-12)
        torch.testing.assert_close(gx[i], gxi, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(gy[i], gyi, rtol=1e-10, atol=1e-14)


def test_float32_small_eps_is_stable() -> None:
    # Spread-out PKDOT-sized clouds (values in [0, 2], k = 30: costs up to ~60, C/ε up to 6e4).
    x64 = rand(128, 30, seed=71, scale=2.0)
    y64 = rand(128, 30, seed=72, scale=2.0)
    for eps in (1e-3, 1e-2):
        x32, y32 = x64.float(), y64.float().requires_grad_()
        s32 = sinkhorn_divergence(x32, y32, eps)
        (g32,) = torch.autograd.grad(s32, y32)
        y = y64.clone().requires_grad_()
        s64 = sinkhorn_divergence(x64, y, eps)
        (g64,) = torch.autograd.grad(s64, y)
        assert torch.isfinite(s32) and torch.isfinite(g32).all()
        assert s32.item() == pytest.approx(s64.item(), rel=1e-5)
        assert (g32.double() - g64).norm() <= 1e-3 * g64.norm()
    # and on tight PKDOT clouds at eps = 1e-3, converged float32 vs converged float64
    x, y = pkdot_clouds(64, seed=7)
    ref = sinkhorn_divergence(x, y, 1e-3, **CONVERGED).item()
    s32 = sinkhorn_divergence(x.float(), y.float(), 1e-3, tol=1e-6).item()
    assert math.isfinite(s32) and s32 == pytest.approx(ref, rel=1e-4)


def test_gradient_only_for_inputs_that_need_it() -> None:
    x = rand(10, 3, seed=81)
    y = rand(12, 3, seed=82).requires_grad_()
    (g_y_only,) = torch.autograd.grad(sinkhorn_divergence(x, y, 0.01), (y,))
    x2 = x.clone().requires_grad_()
    _, g_both = torch.autograd.grad(sinkhorn_divergence(x2, y, 0.01), (x2, y))
    torch.testing.assert_close(g_y_only, g_both, rtol=0, atol=0)
    with torch.no_grad():
        assert not sinkhorn_divergence(x, y, 0.01).requires_grad
    assert torch.is_grad_enabled()


def test_dtype_device_follow_inputs() -> None:
    x = rand(16, 4, seed=91)
    y = rand(16, 4, seed=92)
    assert sinkhorn_divergence(x, y).dtype == F64
    xb, yb = x.bfloat16(), y.bfloat16()
    sb = sinkhorn_divergence(xb, yb)
    assert sb.dtype == torch.bfloat16
    assert sb.float().item() == pytest.approx(sinkhorn_divergence(xb.float(), yb.float()).item(), rel=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    x = rand(2, 64, 30, seed=95, scale=2.0)
    y = rand(2, 64, 30, seed=96, scale=2.0)
    xc, yc = x.float().cuda(), y.float().cuda().requires_grad_()
    s = sinkhorn_divergence(xc, yc, 1e-3)
    (g,) = torch.autograd.grad(s.sum(), yc)
    assert s.device.type == "cuda" and g.device.type == "cuda"
    torch.testing.assert_close(s.cpu().double(), sinkhorn_divergence(x, y, 1e-3), rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------------------------
# Helpers and argument checking.
# ----------------------------------------------------------------------------------------------
def test_cost_matrix() -> None:
    x = rand(2, 7, 3, seed=1, scale=5.0)
    y = rand(2, 4, 3, seed=2, scale=5.0)
    direct = 0.5 * ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(cost_matrix(x, y), direct)
    assert (cost_matrix(x, x).diagonal(dim1=-2, dim2=-1) >= 0).all()


def test_epsilon_schedule() -> None:
    # diameter 4 -> eps0 = 16, ratio 1/4: 16, 4, 1, 1/4, 1/16, 1/64 are > 0.01; 1/256 is not.
    expected = [16, 16, 4, 1, 0.25, 0.0625, 0.015625, 0.01]
    assert epsilon_schedule(4.0, 0.01, 0.5) == pytest.approx(expected, rel=1e-12)
    # PKDOT's clouds (docs/fidelity.md#pkdot-sinkhorn): diameter ≈ 11, eps 0.01 -> 121, 30.25, ..., 0.0295 then 0.01
    sched = epsilon_schedule(11.0, 0.01, 0.5)
    assert sched[:3] == pytest.approx([121, 121, 30.25]) and sched[-2:] == pytest.approx([121 / 4**6, 0.01])
    assert epsilon_schedule(0.0, 0.01, 0.5) == [0.01, 0.01]


def test_rejects_bad_arguments() -> None:
    x = rand(5, 3, seed=1)
    with pytest.raises(ValueError):
        sinkhorn_divergence(x, rand(5, 4, seed=2))
    with pytest.raises(ValueError):
        sinkhorn_divergence(x, rand(1, 5, 3, seed=2))
    with pytest.raises(ValueError):
        sinkhorn_divergence(x, x.float())
    with pytest.raises(ValueError):
        sinkhorn_divergence(x, x, eps=0.0)
    with pytest.raises(ValueError):
        sinkhorn_divergence(x, x, scaling=1.0)

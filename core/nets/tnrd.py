"""The "deeper" trainable nonlinear reaction-diffusion (TNRD) variational network.

Joint denoising and classification of a colour image (paper §2.1): the state
u = (u_rgb, u_m) is an (N, 4, H, W) image, RGB plus a classification mask. Each of
N_t steps is a projected gradient step of a learned energy (eq. 1-2)::

    E_t(u) = sum_{F2} phi2_t(K2_t phi1_t(K1_t u)) + lambda_t / 2 ||R u - f||^2
    u_{t+1} = clip_[0, 1](u_t - grad E_t(u_t))

with K1_t: N_f1 convolutions 11 x 11 x 4, K2_t: N_f2 convolutions 5 x 5 x N_f1,
phi1_t, phi2_t pointwise functions per filter written as sums of J Gaussian radial
basis functions with centres evenly spaced in [-1.2, 1.2], R the restriction to the
RGB channels and f the noisy RGB input. The gradient (eq. 3)::

    grad E_t(u) = K1^T [phi1'(K1 u) * K2^T phi2'(K2 phi1(K1 u))] + lambda R^T (R u - f)

is computed *explicitly*: phi1, phi1' and phi2' analytically from the RBF sums,
K^T with ``conv_transpose2d`` (the exact adjoint of the zero-padded ``conv2d``).
:meth:`TNRD.energy` evaluates E_t with plain torch operations so that a test can
compare :meth:`TNRD.gradient` with ``torch.autograd``.

Borders: the convolutions pad with zeros, so K^T is exactly the adjoint; the image
itself is mirrored by ``pad_px`` before the steps and cropped after, so the zero
padding only touches the mirrored margin.

References
----------
TNRD melanoma paper (shared/papers/tnrd-variational-network-melanoma.txt), §2.1,
eq. (1)-(4), §3. Chen & Pock, "Trainable nonlinear reaction diffusion", TPAMI 2017.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def rbf_eval(x: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, sigma: float, order: int) -> torch.Tensor:
    """Sum of weighted Gaussian RBFs, or its first or second derivative, per channel.

    Parameters
    ----------
    x : (N, C, H, W) float tensor
    w : (C, J) float tensor
        Weight of RBF j for channel c.
    mu : (J,) float tensor
        Centres.
    sigma : float > 0
        Common width.
    order : {0, 1, 2}
        0: phi(x) = sum_j w_cj exp(-(x - mu_j)^2 / (2 sigma^2)); 1: phi'(x); 2: phi''(x).

    Returns
    -------
    (N, C, H, W) tensor, same dtype as ``x``.
    """
    out = torch.zeros_like(x)
    for j in range(mu.shape[0]):
        t = (x - mu[j]) / sigma
        b = torch.exp(-0.5 * t * t)
        if order == 1:
            b = b * (-t / sigma)
        elif order == 2:
            b = b * ((t * t - 1.0) / (sigma * sigma))
        out = out + w[:, j].view(1, -1, 1, 1) * b
    return out


def rbf_basis(xs: torch.Tensor, mu: torch.Tensor, sigma: float, order: int) -> torch.Tensor:
    """(T, J) values of the ``order``-th derivative of each Gaussian RBF at the points ``xs`` (T,)."""
    t = (xs[:, None] - mu[None]) / sigma
    b = torch.exp(-0.5 * t * t)
    if order == 1:
        b = b * (-t / sigma)
    elif order == 2:
        b = b * ((t * t - 1.0) / (sigma * sigma))
    return b


class RBFTable:
    """Grid on which the RBF sums and their analytic derivatives are tabulated.

    Evaluating J = 31 Gaussians per feature value dominates the run time on a CPU
    (about 30 times the convolutions). The sums phi, phi' and phi'' are therefore
    computed analytically at grid points ``x0 + k h`` with ``h = sigma / 64`` over
    [mu_0 - 6 sigma, mu_J + 6 sigma] (beyond, every Gaussian is below e^-18 of its
    peak and the value is taken at the grid end) and interpolated linearly. The error
    is below 1e-3 of the weights' scale for phi' and far smaller for phi; the test
    suite compares against the exact sums.
    """

    def __init__(self, mu: torch.Tensor, sigma: float, oversample: int = 64):
        self.h = sigma / oversample
        self.x0 = float(mu[0]) - 6 * sigma
        n = int(round((float(mu[-1]) + 6 * sigma - self.x0) / self.h)) + 1
        xs = self.x0 + self.h * torch.arange(n, dtype=torch.float64)
        self.basis = [rbf_basis(xs, mu.double(), sigma, k).float() for k in range(3)]  # (T, J) each
        self.n = n

    def to(self, device) -> "RBFTable":
        self.basis = [b.to(device) for b in self.basis]
        return self

    def locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat table index (N, C, H, W) int64 including the channel offset, and the lerp weight in [0, 1)."""
        pos = torch.clamp_(x * (1.0 / self.h) - self.x0 / self.h, 0.0, self.n - 1.001)
        i0 = pos.long()  # floor, pos >= 0
        a = pos - i0
        off = (torch.arange(x.shape[1], device=x.device) * self.n).view(1, -1, 1, 1)
        return i0 + off, a

    def lookup(self, w: torch.Tensor, orders: tuple[int, ...], idx: torch.Tensor, a: torch.Tensor) -> list[torch.Tensor]:
        """phi^(o)(x) for each o in ``orders`` from one gather of an interleaved (value, slope) table."""
        cols = []
        for o in orders:
            t = w @ self.basis[o].to(w.dtype).T  # (C, T)
            cols += [t, torch.cat([t[:, 1:] - t[:, :-1], torch.zeros_like(t[:, :1])], dim=1)]
        table = torch.stack(cols, dim=-1).reshape(-1, len(cols))  # (C * T, 2 k)
        g = table.index_select(0, idx.reshape(-1)).view(*idx.shape, len(cols))
        return [torch.addcmul(g[..., 2 * k], a, g[..., 2 * k + 1]) for k in range(len(orders))]


class _RBF(torch.autograd.Function):
    """phi^(o)(x) for several orders o from one table lookup; backward uses the analytic next derivative."""

    @staticmethod
    def forward(ctx, x, w, table, orders):
        idx, a = table.locate(x)
        ctx.save_for_backward(idx, a, w)
        ctx.table, ctx.orders = table, orders
        return tuple(table.lookup(w, orders, idx, a))

    @staticmethod
    def backward(ctx, *grads):
        idx, a, w = ctx.saved_tensors
        table, orders = ctx.table, ctx.orders
        used = [(o, g) for o, g in zip(orders, grads) if g is not None]
        gx = gw = None
        if ctx.needs_input_grad[0] and used:
            if max(o for o, _ in used) >= 2:
                raise RuntimeError("third derivatives of the RBF activations are not implemented")
            nxt = table.lookup(w, tuple(o + 1 for o, _ in used), idx, a)
            gx = sum(g * d for (_, g), d in zip(used, nxt))
        if ctx.needs_input_grad[1] and used:
            flat = idx.reshape(-1)
            gw = torch.zeros_like(w)
            for o, g in used:
                acc = torch.zeros(w.shape[0] * table.n, dtype=g.dtype, device=g.device)
                acc.index_add_(0, flat, (g * (1 - a)).reshape(-1))
                acc.index_add_(0, flat + 1, (g * a).reshape(-1))
                gw = gw + acc.view(w.shape[0], table.n) @ table.basis[o].to(g.dtype)
        return gx, gw, None, None


def rbf(x: torch.Tensor, w: torch.Tensor, table: RBFTable, order: int = 0) -> torch.Tensor:
    """Differentiable phi^(order)(x) per channel, ``w`` (C, J), ``x`` (N, C, H, W).

    Autograd: d/dx uses the analytic derivative of order + 1, d/dw the basis.
    """
    return _RBF.apply(x, w, table, (order,))[0]


def rbf_pair(x: torch.Tensor, w: torch.Tensor, table: RBFTable) -> tuple[torch.Tensor, torch.Tensor]:
    """(phi(x), phi'(x)) from one table lookup; differentiable like :func:`rbf`."""
    return _RBF.apply(x, w, table, (0, 1))


class _Clip01(torch.autograd.Function):
    """clip to [0, 1]; backward lets through gradients that lead back into [0, 1].

    The exact derivative of the truncation is 0 outside [0, 1]: once a training step
    drives the mask channel below 0 everywhere (the trivial "no immune cell" answer),
    no gradient reaches the parameters again and the mask stays dead. Here, where
    x < 0 the gradient passes when a descent step would raise x (g < 0), where x > 1
    when it would lower x (g > 0); inside [0, 1] it is the exact derivative.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        keep = ((x >= 0) & (x <= 1)) | ((x < 0) & (g < 0)) | ((x > 1) & (g > 0))
        return g * keep


def clip01(x: torch.Tensor) -> torch.Tensor:
    """The projection onto [0, 1] of eq. (1), with the recovering gradient of :class:`_Clip01`."""
    return _Clip01.apply(x)


def _fit_rbf(target, mu: torch.Tensor, sigma: float, order: int = 0) -> torch.Tensor:
    """(J,) least-squares RBF weights whose ``order``-th derivative matches ``target`` on [-1.2, 1.2]."""
    xs = torch.linspace(float(mu[0]), float(mu[-1]), 241, dtype=torch.float64)
    t = (xs[:, None] - mu[None].double()) / sigma
    b = torch.exp(-0.5 * t * t)
    if order == 1:
        b = b * (-t / sigma)
    a = b
    y = target(xs)
    reg = 1e-4 * torch.eye(a.shape[1], dtype=torch.float64)
    return torch.linalg.solve(a.T @ a + reg, a.T @ y).float()


class TNRDStep(nn.Module):
    """Parameters of one step t: K1_t, w1_t, K2_t, w2_t, lambda_t (paper eq. 2)."""

    def __init__(self, channels: int, nf1: int, nf2: int, k1: int, k2: int, mu: torch.Tensor, sigma: float, gen: torch.Generator):
        super().__init__()
        self.K1 = nn.Parameter(_init_filters(nf1, channels, k1, gen))
        self.K2 = nn.Parameter(_init_filters(nf2, nf1, k2, gen))
        # phi1 ~ identity, phi2 ~ 0.05 x^2 (linear diffusion) at the start
        w1 = _fit_rbf(lambda x: x, mu, sigma)
        w2 = _fit_rbf(lambda x: 0.1 * x, mu, sigma, order=1)
        self.w1 = nn.Parameter(w1.repeat(nf1, 1).clone())
        self.w2 = nn.Parameter(w2.repeat(nf2, 1).clone())
        self.lam = nn.Parameter(torch.tensor(0.1))


def _init_filters(n_out: int, n_in: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random zero-mean filters of unit norm: (n_out, n_in, k, k) float32."""
    w = torch.randn(n_out, n_in, k, k, generator=gen)
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


class TNRD(nn.Module):
    """The variational network of the paper: N_t explicit projected gradient steps.

    Parameters
    ----------
    n_steps : int
        N_t (paper: 10).
    nf1, nf2 : int
        Filters of K1 and K2 (paper: 24 and 24).
    k1, k2 : int, odd
        Filter sizes (paper: 11 and 5).
    n_rbf : int
        J, Gaussian RBFs per activation (paper: 31).
    rbf_range : float
        Centres evenly spaced in [-rbf_range, rbf_range] (paper: 1.2); width = spacing.
    channels : int
        4: RGB + mask.
    pad_px : int, optional
        Mirror padding around the image (default: k1 // 2 + k2 // 2).
    seed : int
        Seed of the random initial filters.

    References
    ----------
    TNRD melanoma paper, §2.1, eq. (1)-(3), §3.
    """

    def __init__(self, n_steps: int = 10, nf1: int = 24, nf2: int = 24, k1: int = 11, k2: int = 5, n_rbf: int = 31,
                 rbf_range: float = 1.2, channels: int = 4, pad_px: int | None = None, seed: int = 0):
        super().__init__()
        if k1 % 2 == 0 or k2 % 2 == 0:
            raise ValueError(f"filter sizes must be odd, got {k1} and {k2}")
        self.config = dict(n_steps=n_steps, nf1=nf1, nf2=nf2, k1=k1, k2=k2, n_rbf=n_rbf, rbf_range=rbf_range,
                           channels=channels, pad_px=k1 // 2 + k2 // 2 if pad_px is None else pad_px)
        self.register_buffer("mu", torch.linspace(-rbf_range, rbf_range, n_rbf), persistent=False)
        self.sigma = 2 * rbf_range / (n_rbf - 1)
        gen = torch.Generator().manual_seed(seed)
        self.steps = nn.ModuleList(TNRDStep(channels, nf1, nf2, k1, k2, self.mu, self.sigma, gen) for _ in range(n_steps))
        self.table = RBFTable(self.mu, self.sigma)
        #: True: evaluate the RBF sums exactly (J Gaussians per value; slow, for checks).
        self.exact = False

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.table.to(self.mu.device)
        return out

    def phi(self, x: torch.Tensor, w: torch.Tensor, order: int) -> torch.Tensor:
        """phi^(order)(x): RBF sum (order 0) or its analytic derivative (order 1)."""
        if self.exact:
            return rbf_eval(x, w, self.mu.to(x.dtype), self.sigma, order)
        return rbf(x, w, self.table, order)

    def phi_pair(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(x), phi'(x))."""
        if self.exact:
            mu = self.mu.to(x.dtype)
            return rbf_eval(x, w, mu, self.sigma, 0), rbf_eval(x, w, mu, self.sigma, 1)
        return rbf_pair(x, w, self.table)

    # --- one step ---------------------------------------------------------------------------
    def gradient(self, t: int, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """grad E_t(u) by eq. (3), explicitly.

        Parameters
        ----------
        t : int in [0, n_steps)
        u : (N, 4, H, W) float tensor, current RGB + mask
        f : (N, 3, H, W) float tensor, noisy RGB input u0_rgb

        Returns
        -------
        (N, 4, H, W) tensor.
        """
        s = self.steps[t]
        p1, p2 = s.K1.shape[-1] // 2, s.K2.shape[-1] // 2
        z1 = F.conv2d(u, s.K1, padding=p1)                      # K1 u
        y1, d1 = self.phi_pair(z1, s.w1)                        # phi1(K1 u), phi1'(K1 u)
        z2 = F.conv2d(y1, s.K2, padding=p2)                     # K2 phi1(K1 u)
        g2 = self.phi(z2, s.w2, 1)                              # phi2'(.)
        back = F.conv_transpose2d(g2, s.K2, padding=p2)         # K2^T phi2'
        back = back * d1                                        # phi1'(K1 u) *
        grad = F.conv_transpose2d(back, s.K1, padding=p1)       # K1^T
        data = s.lam * (u[:, :3] - f)                           # lambda R^T (R u - f)
        return grad + F.pad(data, (0, 0, 0, 0, 0, u.shape[1] - 3))

    def energy(self, t: int, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """E_t(u) of eq. (2), summed over the batch, with plain torch operations (for autograd checks).

        Returns
        -------
        0-d tensor.
        """
        s = self.steps[t]
        p1, p2 = s.K1.shape[-1] // 2, s.K2.shape[-1] // 2
        mu = self.mu.to(u.dtype)
        y1 = rbf_eval(F.conv2d(u, s.K1, padding=p1), s.w1, mu, self.sigma, 0)
        z2 = F.conv2d(y1, s.K2, padding=p2)
        return rbf_eval(z2, s.w2, mu, self.sigma, 0).sum() + 0.5 * s.lam * ((u[:, :3] - f) ** 2).sum()

    # --- the network --------------------------------------------------------------------------
    def forward(self, rgb: torch.Tensor, mask0: torch.Tensor | None = None, generator: torch.Generator | None = None,
                return_all: bool = False):
        """Run the N_t projected gradient steps (eq. 1).

        Parameters
        ----------
        rgb : (N, 3, H, W) float32 in [0, 1]
            Noisy RGB image u0_rgb (also the data term's f).
        mask0 : (N, 1, H, W) float32 in [0, 1], optional
            Initial mask u0_m; uniform noise from ``generator`` when None (paper §2.1).
        return_all : bool
            Also return the list of all states u_t.

        Returns
        -------
        rgb_T : (N, 3, H, W) float32 in [0, 1], the denoised image
        mask_T : (N, 1, H, W) float32 in [0, 1], the classification mask
        """
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB, got shape {tuple(rgb.shape)}")
        n, _, h, w = rgb.shape
        if mask0 is None:
            mask0 = torch.rand((n, 1, h, w), generator=generator, dtype=rgb.dtype).to(rgb.device)
        pad = self.config["pad_px"]
        mode = "reflect" if min(h, w) > pad else "replicate"
        f = F.pad(rgb, (pad,) * 4, mode=mode) if pad else rgb
        u = torch.cat([f, F.pad(mask0, (pad,) * 4, mode=mode) if pad else mask0], dim=1)
        states = [u]
        for t in range(len(self.steps)):
            u = clip01(u - self.gradient(t, u, f))
            if return_all:
                states.append(u)
        if pad:
            u = u[:, :, pad : pad + h, pad : pad + w]
        out = (u[:, :3], u[:, 3:4])
        return (*out, states) if return_all else out

    @torch.no_grad()
    def project_(self) -> None:
        """Project the parameters onto the admissible set T (paper §2.1, after eq. 4).

        Every filter K1^i_t and K2^j_t is scaled to Euclidean norm <= 1 and every
        lambda_t is clipped to >= 0, in place.
        """
        for s in self.steps:
            for k in (s.K1, s.K2):
                norms = k.flatten(1).norm(dim=1).clamp(min=1.0)
                k.div_(norms.view(-1, 1, 1, 1))
            s.lam.clamp_(min=0.0)

    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))


def tnrd_loss(rgb_T: torch.Tensor, mask_T: torch.Tensor, rgb_gt: torch.Tensor, mask_gt: torch.Tensor) -> torch.Tensor:
    """Training loss of eq. (4), averaged over pixels and the batch.

    1/6 ||u_rgb_T - g_rgb||^2 + 1/2 ||u_m_T - g_m||^2 per image, divided by H W.

    Parameters
    ----------
    rgb_T, rgb_gt : (N, 3, H, W) float tensors in [0, 1]
    mask_T, mask_gt : (N, 1, H, W) float tensors in [0, 1]

    Returns
    -------
    0-d tensor.
    """
    hw = rgb_T.shape[-1] * rgb_T.shape[-2]
    per = ((rgb_T - rgb_gt) ** 2).sum(dim=(1, 2, 3)) / 6 + ((mask_T - mask_gt) ** 2).sum(dim=(1, 2, 3)) / 2
    return (per / hw).mean()


def psnr(x, y, peak: float = 1.0) -> float:
    """PSNR in dB of arrays or tensors ``x`` and ``y`` in [0, peak] (inf when equal)."""
    mse = float(((torch.as_tensor(x, dtype=torch.float64) - torch.as_tensor(y, dtype=torch.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)

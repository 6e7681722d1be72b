"""Training objectives: continuous-time denoising score matching, DDPM's L_simple, Improved DDPM's
L_hybrid, and Improved DDPM's importance sampler of the discrete step.

Every loss takes (model, sde, x0, ...) and returns the mean over the batch, a 0-d tensor that
carries gradients, or with ``per_sample=True`` the (B,) values (to weight them, e.g. by the
importance weights of :class:`LossSecondMomentSampler`, then average).

Units and reductions:
    dsm_loss     "mean": mean over the D dimensions of x; "sum": 1/2 sum over them (the
                 reference code's rules, Song et al. 2021 ``losses.get_sde_loss_fn``).
    ddpm_loss    mean over dimensions of ||eps_hat - eps||^2 (Ho et al. 2020, Eq. (14)).
    hybrid_loss  L_simple (as ddpm_loss) + vlb_weight * N * L_t, L_t the step's term of the
                 variational bound in bits per dimension (improved-diffusion's units).

The vlb weight and the number of steps: L_vlb = L_0 + ... + L_{N-1} (+ L_prior, constant) sums
N terms, and a uniform step k estimates it by N * L_k. L_hybrid = L_simple + lambda L_vlb with
lambda = ``vlb_weight`` = 0.001 (Nichol & Dhariwal 2021, Eq. (16)) is therefore estimated by
L_simple + 0.001 * N * L_k, which is exactly improved-diffusion's ``RESCALED_MSE`` rule
``vb * num_timesteps / 1000``; at N = 1000 the vlb term enters with weight 1, at N = 4000 with 4.
N is ``sde.chain_length``, the length of the chain being trained: ``sde.N`` except for the cosine
VP, whose chain is the 994 of its 1000 table steps with t_i = (i + 1) / N <= T = t_max (see
:class:`scoresde.sde.VPSDE`); the discrete losses draw k from those steps only.

Reference: Song et al. 2021, Eq. (7) and the reference code's ``losses.py``; Ho et al. 2020,
Eq. (14); Nichol & Dhariwal 2021, Sec. 3.1 (Eq. (15)-(16)) and 3.3 (importance sampling), and
improved-diffusion's ``gaussian_diffusion.py`` / ``resample.py``.
"""
from __future__ import annotations

import math
import weakref

import torch

from ._checks import bcast, check_batch, check_choice, check_finite, check_positive, time_range
from .chain import DiscreteChain, discretized_gaussian_log_likelihood, normal_kl
from .score import ScoreModel, call_score, eps_to_x0, to_eps
from .schedules import as_work, work_dtype
from .sde import SDE, _VPFamily

__all__ = ["dsm_loss", "ddpm_loss", "hybrid_loss", "LossSecondMomentSampler"]

WEIGHTINGS = ("sigma2", "likelihood")
REDUCTIONS = ("mean", "sum")


def _check_x0(x0, finite: bool = True) -> None:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor of shape (B, ...); got {type(x0).__name__}")
    if x0.dim() < 2 or x0.shape[0] < 1:
        raise ValueError(f"x0 must have shape (B, *S) with a batch dimension and data dimensions; got {tuple(x0.shape)}")
    check_batch("x0", x0, finite=finite)


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def _noise(noise, x0, generator) -> torch.Tensor:
    if noise is None:
        return _randn_like(x0, generator)
    if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}; got {got}")
    return noise.to(device=x0.device, dtype=x0.dtype)


_CHAINS: "weakref.WeakKeyDictionary[SDE, DiscreteChain]" = weakref.WeakKeyDictionary()


def _chain(sde) -> DiscreteChain:
    """The full DiscreteChain of ``sde``, built once per SDE object (its device copies are cached too)."""
    chain = _CHAINS.get(sde)
    if chain is None:
        chain = _CHAINS[sde] = DiscreteChain(sde)
    return chain


def _net_kwargs(y) -> dict:
    return {} if y is None else {"y": y}


def _flat_mean(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).mean(dim=1)


def dsm_loss(score_model, sde: SDE, x0: torch.Tensor, *, weighting: str = "sigma2", eps: float = 1e-5,
             reduce: str = "mean", generator: torch.Generator | None = None, per_sample: bool = False,
             t=None, noise: torch.Tensor | None = None, y: torch.Tensor | None = None,
             dequantize: int | None = None) -> torch.Tensor:
    """Continuous-time denoising score matching, Song et al. 2021, Eq. (7).

    t ~ U(eps, T), z ~ N(0, I), x_t = alpha(t) x0 + sigma(t) z (``sde.marginal_prob``), s = the
    model's score at (x_t, t), and per sample
        "sigma2"     (lambda = sigma^2):  reduce((s sigma + z)^2)
        "likelihood" (lambda = g^2):      reduce((s + z / sigma)^2) * g(t)^2 (Song et al. 2021a,
                                          "maximum likelihood training", the likelihood weighting)
    with reduce = mean over dimensions ("mean") or 1/2 sum over them ("sum"), as the reference
    code does. With the exact score of Gaussian data the expectation at fixed t, "sigma2",
    "mean", is 1 - sigma(t)^2 / v(t) with v(t) the marginal variance.

    ``dequantize=L`` (data of L integer levels, x0 their bin centres (2k + 1)/L - 1 on [-1, 1],
    :func:`scoresde.data.levels_to_float`): first x0 <- x0 + (2u - 1)/L, u ~ U[0, 1) per
    dimension (drawn from ``generator`` before t and z), a uniform point of x0's bin. The model
    then learns the density of dequantized data, which is what :func:`scoresde.bits_per_dim`
    evaluates, not spikes at the bin centres. This is the objective of ``scoresde train`` and
    the demo on integer-level data: ``{"loss": "dsm", "dequantize": ds.num_levels}``.

    Arguments:
        score_model: a :class:`~scoresde.ScoreModel`, or any callable (x (B, *S), t (B,)) -> score.
        sde: the forward SDE (VP, sub-VP, VE).
        x0: (B, *S) clean data.
        weighting: "sigma2" or "likelihood".
        eps: smallest t drawn (the reference code's 1e-5), in (0, T).
        reduce: "mean" or "sum" (see above).
        generator: torch.Generator for t and z.
        per_sample: return the (B,) values instead of their batch mean.
        t: optional fixed times (a number or (B,) tensor in (0, T]) instead of t ~ U(eps, T).
        noise: optional z (B, *S) instead of a draw.
        y: optional class labels (B,), passed to the model as ``y=`` (class-conditional UNet).
        dequantize: None (default), or the number of levels L >= 2 of x0 (bin centres in
            (-1, 1)) to dequantize uniformly within their bins (see above).
    Returns:
        0-d tensor (batch mean) or (B,) tensor, in the dtype of the score.
    Raises:
        ValueError: unknown weighting / reduce (listing the valid values), eps outside (0, T),
            t outside (0, T] or of the wrong shape, noise of the wrong shape, NaN / inf x0 or
            score (naming the time), dequantize not an integer >= 2, or x0 outside (-1, 1) or off
            the L bin centres (2k + 1)/L - 1 (by more than 1e-3 of a bin) with it.
    Reference: Song et al. 2021, Eq. (7); reference ``losses.get_sde_loss_fn``; Song, Durkan,
    Murray & Ermon 2021, Eq. (10) (likelihood weighting); Theis et al. 2016, Sec. 3.1, and Song
    et al. 2021, App. D.2 (training on uniformly dequantized data).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("reduce", reduce, REDUCTIONS)
    check_positive("eps", eps)
    _check_x0(x0, finite=dequantize is None)  # with dequantize: finite and in (-1, 1) in one read, below
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T:g}); got {eps}")
    if dequantize is not None:
        x0 = _dequantize(x0, dequantize, generator)
    if t is None:
        dev = generator.device if generator is not None else x0.device
        u = torch.rand(x0.shape[0], generator=generator, device=dev, dtype=work_dtype(dev)).to(x0.device)
        t = u * (sde.T - eps) + eps
    else:
        t, t_min, _ = time_range(t, x0, sde.T)
        if t_min <= 0:
            raise ValueError("t must be > 0: sigma(0) = 0 and the loss divides by it")
    z = _noise(noise, x0, generator)
    tw = as_work(t)  # sde.marginal_prob(x0, t) without its second check of x0 and t (two host reads)
    mean = (bcast(sde.mean_coeff(tw), x0) * x0).to(x0.dtype)
    sd = bcast(sde.marginal_std(tw).to(torch.float64 if x0.dtype == torch.float64 else torch.float32), x0).to(x0.dtype)
    xt = mean + sd * z
    tin = t.to(x0.dtype) if x0.dtype == torch.float64 else t.float()
    fn = score_model if y is None else (lambda a, b: score_model(a, b, y=y))
    score = call_score(fn, xt, tin)
    if weighting == "sigma2":
        sq = (score * sd + z) ** 2
    else:
        sq = (score + z / sd) ** 2
    flat = sq.reshape(sq.shape[0], -1)
    per = flat.mean(dim=1) if reduce == "mean" else 0.5 * flat.sum(dim=1)
    if weighting == "likelihood":
        per = per * (sde.diffusion_coeff(t) ** 2).to(per.dtype)
    return per if per_sample else per.mean()


def _dequantize(x0: torch.Tensor, num_levels, generator) -> torch.Tensor:
    """x0 + (2u - 1) / L, u ~ U[0, 1) per dimension: a uniform point of the bin of each centre x0."""
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"dequantize must be the number of levels of the data, an integer >= 2 (17 for the "
                         f"digits, 256 for 8-bit images), or None; got {num_levels!r}")
    # one host read: NaN / inf, the range, and how far x0 sits from the bin centres (2k + 1)/L - 1
    largest, off = _centre_stats(x0.detach(), num_levels)
    if not math.isfinite(largest):
        raise ValueError("x0 contains NaN or infinite values")
    if largest >= 1:
        raise ValueError("dequantize needs x0 as bin centres (2k + 1)/L - 1 in (-1, 1) "
                         "(scoresde.data.levels_to_float of the levels)")
    tol = max(1e-3, 2.0 * torch.finfo(x0.dtype).eps * num_levels)  # a half-precision x0 rounds the centres
    if off > tol:
        raise ValueError(f"dequantize={num_levels} implies {num_levels} levels, x0 on the bin centres "
                         f"(2k + 1)/{num_levels} - 1, k = 0..{num_levels - 1}; x0 is up to {off:.3g} bin widths "
                         f"away from them: pass the data's own number of levels (e.g. ds.num_levels; 17 for the "
                         f"digits, 256 for 8-bit images) and x0 = scoresde.data.levels_to_float of the levels")
    # drawn on x0's device and dtype, before t and z: the stream of the CLI's runs since they began
    u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return x0 + (2.0 * u - 1.0) * (1.0 / num_levels)


def _centre_stats(x0: torch.Tensor, num_levels: int) -> tuple[float, float]:
    """(max |x0|, max distance of (x0 + 1) L / 2 - 1/2 from an integer), read in one host read."""
    x = x0.float() if x0.dtype in (torch.float16, torch.bfloat16) else x0
    k = (x + 1) * (num_levels / 2) - 0.5
    largest, off = torch.stack([x.abs().amax(), (k - k.round()).abs().amax()]).tolist()
    return largest, off


def _discrete_setup(model, sde, x0, t_index, generator, noise, name):
    """Validate a DDPM-type loss call; return (chain, k (B,), z, x_k, continuous t (B,))."""
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a scoresde.ScoreModel (built with discrete=True); got {type(model).__name__}")
    if not isinstance(sde, _VPFamily):
        raise ValueError(f"{name} needs a VPSDE or SubVPSDE (the discrete DDPM chain); got sde={type(sde).__name__}")
    if not model.discrete:
        raise ValueError(f"{name} trains a discrete DDPM model: build the ScoreModel with discrete=True, so that it "
                         "converts predictions with the chain's alpha-bar table")
    if model.sde.config() != sde.config():
        raise ValueError(f"model.sde {model.sde.config()} differs from sde {sde.config()}")
    _check_x0(x0)
    B = x0.shape[0]
    n = sde.chain_length  # the table steps with t_i <= T (all N, or 994 of 1000 for the cosine VP)
    if t_index is None:
        dev = generator.device if generator is not None else x0.device
        k = torch.randint(0, n, (B,), generator=generator, device=dev).to(x0.device)
    else:
        if not isinstance(t_index, torch.Tensor) or t_index.dtype.is_floating_point or t_index.dtype == torch.bool:
            raise TypeError("t_index must be an integer tensor of discrete steps, shape (B,)")
        if t_index.shape != (B,):
            raise ValueError(f"t_index must have shape (B,) = ({B},); got {tuple(t_index.shape)}")
        if bool((t_index < 0).any()) or bool((t_index >= n).any()):
            where = f"N={n}" if n == sde.N else f"{n}) (the chain's steps with t_i = (i + 1) / N <= T = {sde.T:g}"
            raise ValueError(f"t_index must lie in [0, {where}); got values in [{int(t_index.min())}, "
                             f"{int(t_index.max())}]")
        k = t_index.to(x0.device).long()
    chain = _chain(sde)
    z = _noise(noise, x0, generator)
    xk = chain.q_sample(x0, k, z)
    # step k sits at continuous time index_to_t(k): network_time maps it back to index k, label
    # (N - 1) t or sigma(t), whichever the model was built with
    t = sde.index_to_t(k)
    return chain, k, z, xk, t


def ddpm_loss(model: ScoreModel, sde: SDE, x0: torch.Tensor, *, t_index: torch.Tensor | None = None,
              generator: torch.Generator | None = None, per_sample: bool = False,
              noise: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's L_simple: mean over dimensions of ||eps_hat(x_k, k) - eps||^2 at a discrete step k.

    k ~ U{0..n-1} with n = ``sde.chain_length`` (or ``t_index``), eps ~ N(0, I),
    x_k = sqrt(ab_k) x0 + sqrt(1 - ab_k) eps on the discrete VP chain (:class:`~scoresde.chain.DiscreteChain`), the model evaluated at the
    continuous time ``sde.index_to_t(k)`` of step k (its network then sees index k, or the label
    / sigma it was built for). Models predicting "x0", "v" or "score" are converted to eps with
    the chain's table. With the exact discrete eps-predictor of Gaussian data the expectation at
    step k is the mean over dimensions of 1 - (1 - ab_k) / v_k, v_k = ab_k s^2 + 1 - ab_k.

    Arguments:
        model: :class:`~scoresde.ScoreModel` built with ``discrete=True`` on ``sde``.
        sde: VPSDE or SubVPSDE (its ``alphas_cumprod`` table).
        x0: (B, *S) clean data.
        t_index: optional (B,) integer steps in [0, n) instead of uniform draws (n = N, or 994 for
            the cosine VP).
        generator: torch.Generator for k and eps.
        per_sample: return (B,) instead of the batch mean.
        noise: optional eps (B, *S) instead of a draw.
        y: optional class labels (B,), passed to the network as ``y=``.
    Returns:
        0-d tensor or (B,) tensor.
    Raises:
        TypeError: model not a ScoreModel, t_index not an integer tensor.
        ValueError: a VE SDE, a model without ``discrete=True`` or built on another SDE,
            t_index out of [0, n) or of the wrong shape, NaN / inf x0.
    Reference: Ho et al. 2020, Eq. (14), Alg. 1; reference ``losses.get_ddpm_loss_fn``.
    """
    chain, k, z, xk, t = _discrete_setup(model, sde, x0, t_index, generator, noise, "ddpm_loss")
    eps_hat = model.predict(xk, t, "eps", **_net_kwargs(y))
    per = _flat_mean((eps_hat - z) ** 2)
    return per if per_sample else per.mean()


def hybrid_loss(model: ScoreModel, sde: SDE, x0: torch.Tensor, *, t_index: torch.Tensor | None = None,
                vlb_weight: float = 0.001, generator: torch.Generator | None = None, per_sample: bool = False,
                noise: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """Improved DDPM's L_hybrid = L_simple + vlb_weight * N * L_k with learned-range variance.

    At step k (uniform, or ``t_index``) with x_k as in :func:`ddpm_loss`:
      * L_simple = mean over dimensions of ||eps_hat - eps||^2;
      * the reverse step p(x_{k-1} | x_k) = N(mu, sigma^2) has mu the posterior mean at
        x0_hat = x0 predicted from eps_hat **with eps_hat's gradient stopped** (so L_k trains only
        the variance) and log sigma^2 = f log beta_k + (1 - f) log beta-tilde_k, f = (v + 1) / 2,
        v the model's variance channels (Nichol & Dhariwal 2021, Eq. (15)); beta-tilde_0 = 0 is
        clipped to beta-tilde_1 as Improved DDPM does (case C08), via
        :meth:`DiscreteChain.model_log_variance`;
      * L_k = KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) for k > 0 and the discretized Gaussian
        decoder's -log p(x0 | x_1) for k = 0 (x0 on 256 levels in [-1, 1]), both averaged over
        dimensions and in **bits** (divided by ln 2), as improved-diffusion;
      * the vlb weight: N * L_k estimates L_vlb, so vlb_weight = 0.001 gives improved-diffusion's
        RESCALED_MSE term vb * N / 1000 (see the module docstring).
    The value of the vlb term depends on the data lying on the 8-bit grid only through L_0.

    Arguments:
        model: :class:`~scoresde.ScoreModel` with ``discrete=True`` and ``learn_variance=True``.
        sde, x0, t_index, generator, per_sample, noise, y: as in :func:`ddpm_loss`.
        vlb_weight: lambda >= 0 (0.001 in Improved DDPM).
    Returns:
        0-d tensor or (B,) tensor (L_simple in squared-eps units plus the weighted bits).
    Raises:
        ValueError: a model without learned variance (``learn_variance=True`` needed), plus
            the errors of :func:`ddpm_loss`; negative vlb_weight.
    Reference: Nichol & Dhariwal 2021, Eq. (15)-(16), Sec. 3.1; improved-diffusion
    ``GaussianDiffusion.training_losses`` (``frozen_out``, ``RESCALED_MSE``) and ``_vb_terms_bpd``.
    """
    check_positive("vlb_weight", vlb_weight, allow_zero=True)
    if isinstance(model, ScoreModel) and not model.learn_variance:
        raise ValueError("hybrid_loss needs a model with learned variance: build the network with "
                         "learn_variance=True (2C output channels) and the ScoreModel with learn_variance=True")
    chain, k, z, xk, t = _discrete_setup(model, sde, x0, t_index, generator, noise, "hybrid_loss")
    pred, v, t = model.raw(xk, t, **_net_kwargs(y))
    alpha, sigma = model.coefficients(t)
    eps_hat = to_eps(pred, model.prediction, xk, alpha, sigma)
    l_simple = _flat_mean((eps_hat - z) ** 2)

    x0_hat = eps_to_x0(eps_hat.detach(), xk, alpha, sigma)
    model_mean, _, _ = chain.q_posterior(x0_hat, xk, k)
    model_logvar = chain.model_log_variance(k, xk, "learned_range", v)
    true_mean, _, true_logvar = chain.q_posterior(x0, xk, k)
    kl = _flat_mean(normal_kl(true_mean, true_logvar, model_mean, model_logvar))
    nll = -_flat_mean(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar))
    vb = torch.where(k == 0, nll, kl) / math.log(2.0)
    per = l_simple + (vlb_weight * len(chain) * vb).to(l_simple.dtype)
    return per if per_sample else per.mean()


class LossSecondMomentSampler:
    """Improved DDPM's importance sampler of the discrete step k, single process.

    Keeps the last ``history`` losses of every step. Until every step has ``history`` of them,
    k is uniform and every weight is 1. Afterwards p_k is proportional to sqrt(E[L_k^2]) (the
    mean over the kept losses), mixed with ``uniform_prob`` of the uniform law:
    p = (1 - uniform_prob) p + uniform_prob / N, and the weight of a draw is 1 / (N p_k), so
    E_p[w_k L_k] = (1 / N) sum_k L_k: weighting per-sample losses by ``weights`` keeps the
    objective's expectation (unbiased), while its variance drops.

    Use: ``k, w = sampler.sample(B, generator)``; ``per = hybrid_loss(..., t_index=k,
    per_sample=True)``; ``(per * w).mean().backward()``; ``sampler.update(k, per.detach())``.
    In a multi-process run each process would have to all-gather (k, losses) before ``update``
    (improved-diffusion does); this class does not.

    Arguments:
        num_timesteps: the number of discrete steps, ``sde.chain_length`` (N, or 994 of 1000 for
            the cosine VP, whose chain stops at T = t_max).
        history: losses kept per step (10 in Improved DDPM).
        uniform_prob: weight of the uniform law in the mixture (0.001), in [0, 1].
    Raises:
        ValueError / TypeError for bad arguments (named).
    Reference: Nichol & Dhariwal 2021, Sec. 3.3, Eq. (18); improved-diffusion
    ``resample.LossSecondMomentResampler``.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        check_positive("num_timesteps", num_timesteps, integer=True)
        check_positive("history", history, integer=True)
        check_positive("uniform_prob", uniform_prob, allow_zero=True)
        if uniform_prob > 1:
            raise ValueError(f"uniform_prob must lie in [0, 1]; got {uniform_prob}")
        self.num_timesteps, self.history, self.uniform_prob = int(num_timesteps), int(history), float(uniform_prob)
        self._losses = torch.zeros(self.num_timesteps, self.history, dtype=torch.float64)
        self._counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    def state_dict(self) -> dict:
        """The kept losses (N, history) float64 and their counts (N,) long, copies (for checkpoints)."""
        return {"losses": self._losses.clone(), "counts": self._counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises: ValueError if the shapes do not match this sampler's (num_timesteps, history).
        """
        losses, counts = torch.as_tensor(state["losses"]), torch.as_tensor(state["counts"])
        if losses.shape != self._losses.shape or counts.shape != self._counts.shape:
            raise ValueError(f"state holds losses of shape {tuple(losses.shape)} and counts of shape "
                             f"{tuple(counts.shape)}; this sampler needs {tuple(self._losses.shape)} and "
                             f"{tuple(self._counts.shape)}")
        self._losses.copy_(losses.to(torch.float64))
        self._counts.copy_(counts.long())

    def warmed_up(self) -> bool:
        """True once every step holds ``history`` losses."""
        return bool((self._counts == self.history).all())

    def weights(self) -> torch.Tensor:
        """Current sampling probabilities p (N,) float64 (uniform until warmed up); they sum to 1."""
        N = self.num_timesteps
        if not self.warmed_up():
            return torch.full((N,), 1.0 / N, dtype=torch.float64)
        w = torch.sqrt((self._losses**2).mean(dim=1))
        if not bool(w.sum() > 0):
            return torch.full((N,), 1.0 / N, dtype=torch.float64)
        p = w / w.sum()
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / N

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device=None):
        """Draw ``batch_size`` steps with replacement from :meth:`weights`.

        Returns:
            (t_index (B,) long, weights (B,) float32 = 1 / (N p_k)), on ``device``.
        """
        check_positive("batch_size", batch_size, integer=True)
        p = self.weights()
        dev = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(p.to(dev), batch_size, replacement=True, generator=generator).cpu()
        w = 1.0 / (self.num_timesteps * p[k])
        return k.to(device), w.to(device=device, dtype=torch.float32)

    def update(self, t_index: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample ``losses`` (B,) observed at steps ``t_index`` (B,).

        Raises:
            ValueError: shapes differ, steps outside [0, N), NaN / inf losses.
        """
        if not isinstance(t_index, torch.Tensor) or not isinstance(losses, torch.Tensor):
            raise TypeError("t_index and losses must be tensors of shape (B,)")
        if t_index.dim() != 1 or losses.shape != t_index.shape:
            raise ValueError(f"t_index and losses must both have shape (B,); got {tuple(t_index.shape)} and "
                             f"{tuple(losses.shape)}")
        if t_index.dtype.is_floating_point or t_index.dtype == torch.bool:
            raise TypeError("t_index must be an integer tensor")
        check_finite("losses", losses)
        ks = t_index.detach().cpu().long()
        if len(ks) and (bool((ks < 0).any()) or bool((ks >= self.num_timesteps).any())):
            raise ValueError(f"t_index must lie in [0, num_timesteps={self.num_timesteps})")
        for k, loss in zip(ks.tolist(), losses.detach().cpu().to(torch.float64).tolist()):
            c = int(self._counts[k])
            if c == self.history:
                self._losses[k, :-1] = self._losses[k, 1:].clone()
                self._losses[k, -1] = loss
            else:
                self._losses[k, c] = loss
                self._counts[k] = c + 1

"""``scoresde.sample``: one entry point for every sampler of a score-based diffusion model.

A model is a ``score_fn(x, t)`` mapping x (B, *S) and t (B,) to grad_x log p_t(x) (B, *S);
the sampler knows nothing else about it. Methods, by name (``method=``), with the paper
equation each discretizes and its cost in score evaluations (NFE):

- ``"euler_maruyama"``: the reverse SDE (Song et al. 2021, Eq. (6)) by Euler-Maruyama; NFE = steps.
- ``"reverse_diffusion"``: the SDE's own discretization reversed, Eq. (46)-(47); NFE = steps.
- ``"ancestral"``: the DDPM / SMLD ancestral step on the grid, Eq. (47), App. F (VP, VE);
  NFE = steps.
- ``"pc"``: predictor-corrector, Alg. 1-5 (corrector, then predictor, at each grid time);
  NFE = steps (1 + corrector_steps).
- ``"sde"``: the reverse SDE by torchsde's fixed-step methods in s = T - t; NFE = a steps + b
  (euler: a = 1, b = 0; see :data:`scoresde.solvers.sdeint.NFE`).
- ``"ode"``: the probability-flow ODE, Eq. (13), through torchdiffeq; NFE adaptive, reported.
- ``"ddpm"``: DDPM ancestral sampling on the VP chain, Ho et al. 2020, Alg. 2; NFE = K (chain length).
- ``"ddim"``: DDIM on the VP chain, Song, Meng & Ermon 2021, Eq. (12); NFE = K.

- the fast solvers on nodes (t, alpha, sigma, lambda) of any SDE: ``"dpm_solver"``,
  ``"dpm_adaptive"`` (Lu et al. 2022a), ``"dpmpp_2m"``, ``"dpmpp_3m"``, ``"dpmpp_2m_sde"`` (Lu et al.
  2022b), ``"unipc"`` (Zhao et al. 2023), ``"deis"`` (Zhang & Chen 2023), ``"heun"`` (Karras et al.
  2022); see :mod:`scoresde.solvers.registry` for each one's order, options and NFE.

Plus one NFE for ``denoise=True`` with ``"sde"``, ``"ode"`` and the fast solvers on continuous
nodes (Tweedie's step at eps; see :func:`sample`). Every method is a registered
:class:`scoresde.solvers.base.Solver`; this function keeps only what all share.

Reference: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations" (ICLR), Sec. 4 and App. D-G; Ho et al. 2020; Song, Meng & Ermon 2021 (DDIM).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from ._checks import bcast
from .grids import repaint_schedule
from .sde import SDE
from .score_fn import FiniteCheck
from .solvers.base import SOLVERS
from .solvers.common import ScoreEval, check_generator, generator_device
from .solvers.ode import HALF_DTYPES
from .solvers.registry import METHODS, get_solver

#: the method-specific keyword arguments of :func:`sample` and their defaults (read from the registry)
OPTIONS = {name: dict(cls.options) for name, cls in SOLVERS.items()}


@dataclass
class SampleInfo:
    """Statistics of one :func:`sample` call.

    A dataclass made by :func:`sample` with ``return_info=True``: its arguments below are also
    its attributes.

    Arguments:
        nfe: the exact number of ``score_fn`` calls made (each on the whole batch), the
            ``denoise`` step included.
        method: the method name.
        steps: steps taken (grid steps, fixed-grid "ode" steps, or the chain length K for
            "ddpm" / "ddim"); None for an adaptive "ode" solve.
        times: the continuous time grid (steps + 1,) float64 of the grid methods, the chain's
            integer ``timesteps`` (K,) for "ddpm" / "ddim", None for "ode".
    """

    nfe: int
    method: str
    steps: int | None
    times: torch.Tensor | None


def _check_shape(shape) -> tuple:
    """``shape`` as a tuple of positive ints (B, *S); TypeError / ValueError naming ``shape``."""
    try:
        if not isinstance(shape, (tuple, list, torch.Size)) or any(isinstance(s, bool) for s in shape):
            raise TypeError
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints (B, *S), e.g. (16, 1, 8, 8) or (B, D); got {shape!r}") from None
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes (B, ...); got {shape}")
    return shape


def _check_device(device) -> torch.device:
    """``device`` as a torch.device that this torch can allocate on; ValueError naming ``device``."""
    try:
        device = torch.device(device)
        if device.type == "meta":
            raise ValueError("device 'meta' holds no values (tensors there have shapes only); use 'cpu' or 'cuda'")
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"device {str(device)!r} is not usable here ({reason}); "
                         f"torch.cuda.is_available() = {torch.cuda.is_available()}") from None
    return device


def _prior(sde: SDE, shape, generator, device, dtype) -> torch.Tensor:
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator is a list of {len(generator)} generators but the batch size is {shape[0]}; "
                             "give one generator per sample")
        return torch.cat([sde.prior_sampling((1, *shape[1:]), g, device, dtype) for g in generator])
    return sde.prior_sampling(shape, generator, device, dtype)


def _tweedie(score: ScoreEval, sde: SDE, x: torch.Tensor, eps: float) -> torch.Tensor:
    """E[x_0 | x_eps] = (x + sigma^2 s(x, eps)) / alpha at t = eps (Tweedie's formula; 1 NFE)."""
    out_dtype = x.dtype
    if x.dtype in HALF_DTYPES:  # as the solvers before it: half-precision states are computed in float32
        x = x.float()
    t = score.time(eps, x)
    s = score(x, t)
    a, sig = sde.mean_coeff(t), sde.marginal_std(t)
    return ((x + bcast(sig**2, x).to(x.dtype) * s) / bcast(a, x).to(x.dtype)).to(out_dtype)


def _check_callables(score_fn, sde, generator, step_hook) -> None:
    """TypeError naming ``sde``, ``score_fn``, ``generator`` or ``step_hook`` when it is not what sample() takes."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE); got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x, t) -> score; got {type(score_fn).__name__}")
    check_generator(generator)
    if step_hook is not None and not callable(step_hook):
        raise TypeError(f"step_hook must be callable (x, x_mean, alpha, sigma) -> (x, x_mean) or None; "
                        f"got {type(step_hook).__name__}")


def _placement(shape: tuple, x_T, device, dtype, generator) -> tuple[torch.device, torch.dtype]:
    """The samples' device and dtype from the arguments (``x_T``'s, the generator's, else CPU float32);
    checks x_T (shape, floating, finite), dtype, device and the generator's device."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (torch.float32, torch.float64, ...); got {dtype!r}")
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or tuple(x_T.shape) != shape or not x_T.is_floating_point():
            got = (f"shape {tuple(x_T.shape)}, dtype {x_T.dtype}" if isinstance(x_T, torch.Tensor)
                   else type(x_T).__name__)
            raise ValueError(f"x_T must be a floating tensor of shape {shape}; got {got}")
        if not bool(torch.isfinite(x_T).all()):
            raise ValueError("x_T contains NaN or inf")
        device = x_T.device if device is None else _check_device(device)
        dtype = x_T.dtype if dtype is None else dtype
    device = _check_device(device) if device is not None else (generator_device(generator) or torch.device("cpu"))
    gdev = generator_device(generator)
    if gdev is not None and gdev.type != device.type:
        raise ValueError(f"generator is on {gdev} but the samples are on {device}; create the generator on the "
                         f"sampling device: torch.Generator(device={str(device)!r})")
    return device, dtype or torch.float32


def sample(score_fn, sde: SDE, shape, *, method: str, steps=None, eps: float | None = None, generator=None,
           device=None, dtype: torch.dtype | None = None, denoise: bool = True, progress: bool = False,
           return_info: bool = False, x_T: torch.Tensor | None = None, step_hook=None, resample=None,
           check_every: int | None = None, **options):
    """Draw samples from a score-based model by integrating the reverse of ``sde`` from T to eps.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S), an estimate of grad_x log p_t(x);
            e.g. a :class:`scoresde.ScoreModel`. t arrives as float64 (float32 on MPS). Its
            output is checked (shape on every call; NaN / inf with the time of the call, see
            ``check_every``).
        sde: the forward SDE (:class:`~scoresde.VPSDE`, :class:`~scoresde.SubVPSDE`,
            :class:`~scoresde.VESDE`).
        shape: (B, *S), the shape of the returned batch.
        method: a name of the solver registry (:data:`scoresde.solvers.registry.METHODS`):
            "euler_maruyama", "reverse_diffusion", "ancestral", "pc", "sde", "ode", "ddpm", "ddim"
            (see the module docstring and the options below) and the fast solvers "dpm_solver",
            "dpm_adaptive", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "deis", "heun" (options:
            their classes in :mod:`scoresde.solvers`; docs/sampling.md has the table).
        steps: grid methods ("euler_maruyama", "reverse_diffusion", "ancestral", "pc", "sde"):
            number of steps (int >= 1, default ``sde.N``) of the grid
            :func:`scoresde.grids.time_grid` from T to eps; "ode": steps of a fixed-grid
            ``ode_method`` (required there, not accepted by adaptive ones); "ddpm" / "ddim": the
            chain's steps as :func:`scoresde.grids.select_timesteps` takes them (an int K with
            ``skip``, a respacing string such as "ddim50" or "250", or an explicit list of
            indices; default all N steps); the fast solvers: their steps (default 20, "heun" 18;
            on table nodes a ``select_timesteps`` selection of that many; "dpm_solver" counts NFE;
            "dpm_adaptive" takes none).
        eps: last time of the continuous methods, in (0, T); default ``sde.default_eps``
            (1e-3 VP / sub-VP, 1e-5 VE, as the reference code). Not accepted by "ddpm" / "ddim",
            which end on alpha-bar = 1.
        generator: a ``torch.Generator`` (the same generator state gives the same output,
            bit for bit, on the same device), a list of B generators (sample b's noise comes
            from generator b only, so it does not depend on the batch's other seeds, except
            through the batch-averaged Langevin step and the shared adaptive ODE steps), or
            None (torch's global generator).
        device, dtype: of the sample; default the device of ``x_T`` or of ``generator`` (else
            CPU) and float32 (``x_T``'s dtype if given). dtype must be floating; "ode" solves a
            float16 / bfloat16 state in float32 (score_fn then sees float32) and casts the
            result back, since adaptive step control fails in half precision.
        denoise: return the noise-free mean of the last step (grid methods: the predictor's
            mean at eps; "sde" / "ode": Tweedie's E[x_0 | x_eps] = (x + sigma(eps)^2 s) / alpha(eps),
            one extra NFE). "ddpm" / "ddim" always end without noise, so it changes nothing there.
        progress: a tqdm bar counting score evaluations (NFE), its total the exact NFE of the
            plan (``denoise`` included); no total for "ode" and "dpm_adaptive" (the count only).
        return_info: also return a :class:`SampleInfo` (with the exact NFE).
        x_T: optional start (B, *S) at time T (default: a draw from ``sde.prior_sampling``);
            e.g. to compare samplers from the same latent.
        step_hook: optional ``hook(x, x_mean, alpha, sigma) -> (x, x_mean)`` that every method calls
            on its start state and after each step (:data:`scoresde.solvers.base.StepHook`); what
            :func:`scoresde.inpaint` and :func:`scoresde.colorize` use to constrain the known part.
        resample: optional (jump_length, jump_n_sample) of RePaint's resampling schedule
            (:func:`scoresde.constrained.repaint_schedule`), for the grid samplers
            "euler_maruyama", "reverse_diffusion", "ancestral", "pc" only (ValueError otherwise).
        check_every: evaluations between reads of the score's NaN / inf flag (int >= 1); None:
            1 on the CPU (free there), 16 on a GPU (a read is a host-device sync). With k > 1 a
            NaN is reported up to k - 1 evaluations late (at the latest at the end), the error
            naming the time and number of the first bad evaluation.
        **options: method-specific keyword arguments (anything else raises TypeError):
            "euler_maruyama", "reverse_diffusion", "ancestral": ``spacing`` of the grid
                ("uniform", "quadratic", "logsnr").
            "pc": ``predictor`` ("reverse_diffusion" (default), "euler_maruyama", "ancestral"),
                ``corrector`` ("langevin" (default), "ald", "none"), ``snr`` (> 0, default 0.16),
                ``corrector_steps`` (>= 1, default 1), ``corrector_norm`` ("batch" (default,
                the reference's batch-averaged norms) or "sample"; see
                :class:`~scoresde.solvers.correctors.LangevinCorrector`), ``spacing``.
            "sde": ``sde_method`` ("euler" (default), "milstein", "srk", "heun", "midpoint",
                "reversible_heun", "euler_heun"); uniform grid only. NFE per step: 1 for euler,
                milstein, euler_heun, reversible_heun (+1 once); 2 for heun, midpoint, srk (SRA1, the
                strong-order-1.5 scheme for additive noise) (:data:`scoresde.solvers.sdeint.NFE`).
            "ode": ``ode_method`` (any method of :func:`scoresde.solvers.ode.solve_ode`, default
                "dopri5"), ``rtol``, ``atol`` (> 0, default 1e-5), ``max_nfe``, ``min_step``.
            "ddpm": ``variance`` ("fixed_small", "fixed_large", "learned_range"; default
                "learned_range" for a ScoreModel with ``learn_variance=True``, else
                "fixed_small"), ``skip`` ("uniform", "quadratic"), ``clip_x0`` (False), ``alphas``
                ("table": the DDPM table, the default for a ``ScoreModel(discrete=True)``;
                "continuous": alpha-bar(t_i) of the continuous SDE, the default for any other
                score, so that the chain matches the alpha, sigma the score was formed with).
            "ddim": ``eta`` in [0, 1] (default 0), ``skip``, ``clip_x0`` (False), ``alphas``.
    Returns:
        The samples, a (B, *S) tensor (at eps for the continuous methods, at alpha-bar = 1 for
        "ddpm" / "ddim"); with ``return_info=True`` the pair (samples, :class:`SampleInfo`).
        Sampling runs under ``torch.no_grad()``.
    Raises:
        ValueError: unknown method / predictor / corrector / sde_method / ode_method / variance /
            skip / spacing (the message lists the valid names); steps < 1; eps outside (0, T);
            eta outside [0, 1]; snr, rtol or atol <= 0; a bad shape or ``x_T``; a ``device``
            this torch cannot use (e.g. "cuda" without CUDA); "ddpm" / "ddim"
            with an SDE other than VPSDE; "ancestral" with sub-VP; a ``score_fn`` output whose
            shape differs from x, or that is NaN / inf (the message gives the time).
        TypeError: an option the method does not take; non-callable score_fn; bad generator;
            ``check_every`` not an int >= 1 or None;
            ``shape`` not a tuple of ints; ``dtype`` not a floating torch.dtype.
        ODESolverError: the adaptive ODE solve did not finish (``max_nfe``, step underflow).
    Reference:
        Song et al. 2021, Sec. 4.1-4.3, Eq. (6), (13), (46)-(47), Alg. 1-5; Ho et al. 2020,
        Alg. 2; Song, Meng & Ermon 2021, Eq. (12); Nichol & Dhariwal 2021, Sec. 3.1, 4.
    """
    solver_cls = get_solver(method)
    _check_callables(score_fn, sde, generator, step_hook)
    solver = solver_cls(**options)
    shape = _check_shape(shape)
    for name, flag in (("denoise", denoise), ("progress", progress), ("return_info", return_info)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False; got {flag!r}")
    device, dtype = _placement(shape, x_T, device, dtype, generator)

    plan = solver.plan(score_fn, sde, steps, eps)
    if resample is not None:
        if not hasattr(solver, "with_schedule"):
            raise ValueError(f"resample (RePaint) needs a grid sampler (euler_maruyama, reverse_diffusion, ancestral, "
                             f"pc); got method {method!r}")
        plan = solver.with_schedule(plan, repaint_schedule(plan.times, *resample))
    if check_every is not None:
        FiniteCheck(check_every)  # TypeError / ValueError naming check_every
    x, nfe = _run(solver, score_fn, sde, plan, shape, x_T, device, dtype, generator, denoise, progress, step_hook,
                  method, check_every)
    if return_info:
        return x, SampleInfo(nfe=nfe, method=method, steps=plan.steps, times=plan.times)
    return x


def _run(solver, score_fn, sde, plan, shape, x_T, device, dtype, generator, denoise, progress, hook, method,
         check_every=None):
    """Draw (or take) x_T, solve, apply Tweedie's step for ``denoise``; returns (samples, NFE).

    The bar counts NFE (ScoreEval advances it once per call); its total is the plan's NFE plus
    Tweedie's step, None when the plan does not know it (adaptive)."""
    tweedie = denoise and plan.tweedie_eps is not None
    total = None if plan.nfe is None else plan.nfe + int(tweedie)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"sample ({method})", unit="nfe")
    score = ScoreEval(score_fn, bar, check_every)
    try:
        with torch.no_grad():
            x = _prior(sde, shape, generator, device, dtype) if x_T is None else x_T.to(device=device, dtype=dtype)
            x = solver.solve(score, sde, x, plan, generator=generator, denoise=denoise, hook=hook)
            if tweedie:
                x = _tweedie(score, sde, x, plan.tweedie_eps)
            score.finish()  # the NaN flags not read yet (check_every > 1)
    except Exception as err:  # a solver error may stem from a NaN score not read yet: report the NaN
        try:
            score.finish()
        except ValueError as nan:
            raise nan from err
        raise
    finally:
        if bar is not None:
            bar.close()
    return x, score.nfe

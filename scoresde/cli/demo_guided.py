"""The controllable-generation part of ``scoresde demo``: class-conditional samples and inpainting.

The demo's model is class-conditional with label dropout 0.1 (Ho & Salimans 2022), so one
network gives the unconditional score (the null class: the sampler comparison and bits/dim) and
the conditional ones.

* :func:`class_conditional`: classifier-free guidance at each scale w of the preset, -n samples
  of every digit from the same seed by one fast solver; the accuracy of
  :func:`scoresde.metrics.digit_classifier` on them (the fraction classified as the class they
  were drawn for, with its binomial standard error) and their Frechet distance to the test split
  (all classes pooled: diversity lost to strong guidance shows there); a grid, one row per
  digit, at the default w (:data:`scoresde.cli.options.CFG_SCALE`).
* :func:`inpainting`: a grid of (masked input, samples, truth) for the first test digit of each
  class, and on the first test digits one completion each by replacement and by RePaint
  resampling: the fraction the digit classifier assigns to the truth's class, and the RMSE of
  the hidden pixels against the truth.
"""
from __future__ import annotations

import math
import time

import torch

from ..plotting import save_image_grid
from .options import CFG_SCALE

__all__ = ["class_conditional", "inpainting", "class_section", "inpaint_section"]


def _se(a: float, n: int) -> float:
    return math.sqrt(max(a * (1.0 - a), 0.0) / n)


def class_conditional(model, sde, ds, out, p, *, seed, device, pc_opts, log=None) -> dict:
    """Accuracy (and FD) of classifier-free-guided samples against the scale; writes class_conditional.png."""
    from .. import data as D
    from ..guidance import classifier_free_guidance
    from ..metrics import digit_classifier, digit_frechet_distance
    from .compare import _label, steps_for_nfe, to_data
    from .samples import draw
    shape, k, per = tuple(ds.shape), model.num_classes, p["cfg_per_class"]
    method = p["cfg_method"]
    steps = steps_for_nfe(method, p["cfg_nfe"], model) if method != "pc" else p["cfg_nfe"] // 2
    labels = torch.arange(k).repeat_interleave(per)
    clf, test = digit_classifier(), D.digits("test")
    scales = sorted(set(p["cfg_scales"]) | {CFG_SCALE})
    rows, grid = [], None
    for w in scales:
        t0 = time.perf_counter()
        x, nfes = draw(model, sde, shape, method=method, steps=steps, n=len(labels), batch_size=1000, seed=seed,
                       progress=False, device=device,
                       score_for=lambda s, m, w=w: classifier_free_guidance(model, labels[s:s + m], w),
                       **(pc_opts if method == "pc" else {}))
        x = to_data(x, ds)
        with torch.no_grad():
            acc = float((clf(x).argmax(-1) == labels).float().mean())
        rows.append({"scale": w, "accuracy": acc, "se": _se(acc, len(labels)), "nfe": nfes[0],
                     "fd": digit_frechet_distance(x, test.data), "wall_s": time.perf_counter() - t0})
        if log:
            log(f"classifier-free guidance w = {w:g}: digit-classifier accuracy {acc:.3f}, FD {rows[-1]['fd']:.2f}")
        if w == CFG_SCALE:
            grid = x.reshape(k, per, *shape)[:, :10]
    save_image_grid(grid.reshape(-1, *shape), out / "class_conditional.png", nrow=grid.shape[1])
    return {"rows": rows, "scale": CFG_SCALE, "method": method, "label": _label(method), "steps": steps,
            "per_class": per, "n": len(labels), "classes": k, "picture": "class_conditional.png"}


def inpainting(model, sde, ds, out, p, *, seed, device, pc_opts, log=None) -> dict:
    """The inpainting grid (inpainting.png) and the replacement / RePaint table on the first test digits."""
    from .. import data as D
    from ..metrics import digit_classifier
    from .compare import to_data
    from .inpainting import inpaint_rows, make_mask
    from .samples import draw
    shape, k, steps = tuple(ds.shape), p["inpaint_samples"], p["inpaint_steps"]
    test = D.digits("test")
    opts = dict(method="pc", steps=steps, batch_size=1000, seed=seed, progress=False, device=device, **pc_opts)
    first = torch.stack([torch.nonzero(test.labels == c)[0, 0] for c in range(10)])
    truth, known = test.data[first], make_mask(p["inpaint_mask"], shape, len(first))
    x, nfes = draw(model, sde, shape, n=len(first) * k, known=(truth.repeat_interleave(k, 0),
                                                                known.repeat_interleave(k, 0)), **opts)
    picture = to_data(x, ds).reshape(len(first), k, *shape)
    save_image_grid(inpaint_rows(truth, known, picture), out / "inpainting.png", nrow=k + 2, data_range=(0.0, 1.0),
                    pad_value=0.75)
    n = min(p["inpaint_eval"], len(test))
    truth, labels = test.data[:n], test.labels[:n]
    known = make_mask(p["inpaint_mask"], shape, n)
    clf, rows = digit_classifier(), []
    with torch.no_grad():
        ceiling = float((clf(truth).argmax(-1) == labels).float().mean())
    j, r = p["repaint"]
    for name, extra in (("replacement", {}), (f"RePaint (jump length {j}, {r} samples)",
                                              {"jump_length": j, "jump_n_sample": r})):
        t0 = time.perf_counter()
        x, nfe = draw(model, sde, shape, n=n, known=(truth, known), **opts, **extra)
        x = to_data(x, ds)
        with torch.no_grad():
            acc = float((clf(x).argmax(-1) == labels).float().mean())
        rmse = float(((x - truth)[~known] ** 2).mean().sqrt())
        rows.append({"method": name, "nfe": nfe[0], "accuracy": acc, "se": _se(acc, n), "rmse": rmse,
                     "wall_s": time.perf_counter() - t0})
        if log:
            log(f"inpainting ({name}): completions classified as the truth's digit {acc:.3f}, hidden-pixel RMSE "
                f"{rmse:.3f}")
    return {"mask": p["inpaint_mask"], "steps": steps, "nfe": nfes[0], "samples": k, "n": n, "rows": rows,
            "hidden": float((~known[0]).float().mean()), "picture": "inpainting.png", "truth_accuracy": ceiling}


def class_section(cc: dict, run: str = "scoresde-demo/model", here: str = "from the folder you ran the demo in") -> str:
    """The report's class-conditional section (markdown).

    Arguments:
        cc: the result of :func:`class_conditional`.
        run: the model folder as the user can type it (relative to the folder the demo ran in).
        here: where the command works from, e.g. "from the folder you ran the demo in".
    Returns:
        the Markdown section.
    Raises:
        KeyError: ``cc`` lacks a field of :func:`class_conditional`'s result.
    Reference:
        Ho & Salimans 2022, "Classifier-Free Diffusion Guidance".
    """
    table = "\n".join(
        f"| {r['scale']:g}{' (default)' if r['scale'] == cc['scale'] else ''} | {r['accuracy']:.3f} ± {r['se']:.3f} | "
        f"{r['fd']:.2f} | {r['nfe']} | {r['wall_s']:.1f} |" for r in cc["rows"])
    return f"""## Class-conditional samples (classifier-free guidance)
The model is class-conditional, trained with label dropout 0.1: a dropped label is the null class
{cc['classes']}, so one network gives s(x, t, y) and the unconditional s(x, t, null) that the comparison above
and the bits/dim use. Classifier-free guidance samples class y with (1 + w) s(x, t, y) - w s(x, t, null)
(Ho & Salimans 2022; w = 0 is the conditional model, diffusers' `guidance_scale` is 1 + w), here by
{cc['label']} ({cc['steps']} steps) from the same seed at every w, {cc['per_class']} samples of each digit.
Accuracy: the fraction of the {cc['n']} samples that the digit classifier of the Frechet distance assigns to the
digit they were drawn for (± binomial standard error). FD: their Frechet distance to the test split, all digits
pooled (strong guidance loses diversity). `scoresde sample {run} --class all` ({here}) draws these with
the default w = {cc['scale']:g}.

| w | accuracy | FD (pooled) | NFE | seconds |
|---:|---:|---:|---:|---:|
{table}

One row per digit, w = {cc['scale']:g}:

![class-conditional samples, one row per digit]({cc['picture']})
"""


def inpaint_section(ip: dict, run: str = "scoresde-demo/model",
                    here: str = "from the folder you ran the demo in") -> str:
    """The report's inpainting section (markdown).

    Arguments:
        ip: the result of :func:`inpainting`.
        run: the model folder as the user can type it; here: where the command works from.
    Returns:
        the Markdown section.
    Raises:
        KeyError: ``ip`` lacks a field of :func:`inpainting`'s result.
    Reference:
        Song et al. 2021, App. I.2 (replacement); Lugmayr et al. 2022 (RePaint).
    """
    table = "\n".join(f"| {r['method']} | {r['nfe']} | {r['accuracy']:.3f} ± {r['se']:.3f} | {r['rmse']:.3f} | "
                      f"{r['wall_s']:.1f} |" for r in ip["rows"])
    return f"""## Inpainting held-out digits
`scoresde inpaint {run} --mask {ip['mask']}` ({here}): the {ip['mask']} mask hides {ip['hidden']:.0%} of the pixels; after
every step of PC ({ip['steps']} steps, NFE {ip['nfe']}) the known pixels are replaced by a draw of their forward
perturbation at the current time (Song et al. 2021, App. I.2) and pasted exactly at the end, with the model's
unconditional score. Each row: the masked input (hidden pixels in red), {ip['samples']} samples, the truth; the
first test digit of each class.

![inpainting: masked input, samples, truth]({ip['picture']})

On the first {ip['n']} test digits, one completion each: the fraction that the digit classifier assigns to the
truth's digit (on the true images themselves: {ip['truth_accuracy']:.3f}), and the RMSE of the hidden pixels
against the truth (data range [-1, 1]). RePaint resampling
(Lugmayr et al. 2022) goes back along the forward process and redoes each block of steps, at about that many
times the NFE.

| method | NFE | classified as the truth's digit | hidden-pixel RMSE | seconds |
|---|---:|---:|---:|---:|
{table}
"""

"""Sample-quality metrics: the sliced Wasserstein distance and the Frechet distance.

``sliced_wasserstein`` compares two point clouds (2-D toys, any flattened data);
``frechet_distance`` compares two sets of feature vectors by their Gaussian moments (the
formula behind FID). ``DigitClassifier`` / ``digit_classifier`` train (seeded, in a few seconds
on a CPU, nothing downloaded) the small classifier whose hidden features the digit Frechet
distance :func:`digit_frechet_distance` uses, the "FID" of scikit-learn's 8x8 digits.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ._checks import check_positive

__all__ = ["sliced_wasserstein", "frechet_distance", "frechet_from_moments", "gaussian_moments",
           "DigitClassifier", "train_digit_classifier", "digit_classifier", "digit_frechet_distance"]


def _as_cloud(name: str, x) -> torch.Tensor:
    """(n, *S) array or tensor -> (n, d) float64 tensor, checked finite and non-empty."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape (n, d); got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (n, d) (or (n, *S), flattened); got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one point; got shape {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], -1).to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _w2_sq_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between the empirical measures of the columns of a (n, P) and b (m, P).

    W2^2 = int_0^1 (F^-1(u) - G^-1(u))^2 du with the empirical quantile functions, which are
    piecewise constant; integrating over the merged breakpoints {i/n} u {j/m} is exact.
    Returns (P,).
    """
    a, _ = torch.sort(a, dim=0)
    b, _ = torch.sort(b, dim=0)
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return ((a - b) ** 2).mean(dim=0)
    levels = torch.unique(torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                                     torch.arange(1, m + 1, dtype=torch.float64) / m]))
    levels[-1] = 1.0
    lower = torch.cat([levels.new_zeros(1), levels[:-1]])
    width = levels - lower
    mid = 0.5 * (levels + lower)
    ia = torch.clamp(torch.floor(mid * n).long(), max=n - 1)
    ib = torch.clamp(torch.floor(mid * m).long(), max=m - 1)
    return (width[:, None] * (a[ia] - b[ib]) ** 2).sum(dim=0)


def sliced_wasserstein(x, y, n_projections: int = 128, generator: torch.Generator | None = None) -> float:
    """Monte Carlo estimate of the sliced 2-Wasserstein distance between two point clouds.

    SW_2(x, y) = ( E_theta[ W_2^2(theta . x, theta . y) ] )^(1/2) with theta uniform on the unit
    sphere S^(d-1). Each one-dimensional W_2 between the projected empirical measures is exact
    (sorted quantile functions; the clouds may hold different numbers of points); the
    expectation over theta is averaged over ``n_projections`` directions drawn from
    ``generator``. The estimate of SW_2^2 is unbiased; for d = 1 the result is the exact W_2.

    Arguments:
        x: (n, d) points (or (n, *S), flattened to d = prod(S)), tensor or numpy array.
        y: (m, d) points of the same dimension d; m may differ from n.
        n_projections: number of random directions (> 0 integer).
        generator: torch.Generator (CPU) for the directions; None uses the global RNG.
    Returns:
        float, the distance in the units of the data (not squared).
    Raises:
        TypeError: x or y not a tensor/array; n_projections not an integer.
        ValueError: dimensions differ, a cloud is empty or holds NaN/inf, n_projections <= 0.
    Reference:
        Rabin, Peyre, Delon & Bernot 2011, "Wasserstein Barycenter and its Application to
        Texture Mixing", Sec. 3 (sliced Wasserstein); Bonneel et al. 2015, Eq. (2).
    """
    check_positive("n_projections", n_projections, integer=True)
    x, y = _as_cloud("x", x), _as_cloud("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    d = x.shape[1]
    theta = torch.randn((d, n_projections), generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True).clamp_min(1e-300)
    sq = _w2_sq_1d(x @ theta, y @ theta)
    return math.sqrt(float(sq.mean()))


def gaussian_moments(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of feature vectors (n, d), in float64 numpy.

    Raises:
        ValueError: fewer than 2 vectors, NaN/inf values, or not 2-D.
    """
    f = _as_cloud("features", features).numpy()
    if f.shape[0] < 2:
        raise ValueError(f"features need at least 2 vectors for a covariance; got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_from_moments(mu1, cov1, mu2, cov2) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2).

    d^2 = |mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1^(1/2) cov2 cov1^(1/2))^(1/2)); the trace of the
    matrix square root is computed from the eigenvalues of the symmetric matrix
    cov1^(1/2) cov2 cov1^(1/2) (which equal those of cov1 cov2), so no complex parts arise.

    Arguments:
        mu1, mu2: (d,) means; cov1, cov2: (d, d) symmetric positive semi-definite covariances.
    Returns:
        float, the squared distance (units of the features squared), >= 0 up to rounding.
    Raises:
        ValueError: shapes do not match.
    Reference:
        Dowson & Landau 1982, "The Frechet distance between multivariate normal distributions";
        Heusel et al. 2017 (FID), Eq. (6).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"moment shapes do not match: mu1 {mu1.shape}, cov1 {cov1.shape}, "
                         f"mu2 {mu2.shape}, cov2 {cov2.shape}")
    w, u = np.linalg.eigh(0.5 * (cov1 + cov1.T))
    root1 = (u * np.sqrt(np.clip(w, 0, None))) @ u.T
    m = root1 @ cov2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def frechet_distance(x_features, y_features) -> float:
    """Frechet distance between the Gaussian fits of two sets of feature vectors.

    Arguments:
        x_features: (n, d) features of one sample set (tensor or array); y_features: (m, d).
    Returns:
        float, d^2 of :func:`frechet_from_moments` (squared feature units, the FID convention).
        It is biased upward for small n, m, so compare values computed with equal set sizes.
    Raises:
        ValueError: dimensions differ, fewer than 2 vectors, NaN/inf.
    Reference:
        Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ...", Eq. (6).
    """
    mx, cx = gaussian_moments(x_features)
    my, cy = gaussian_moments(y_features)
    if mx.shape != my.shape:
        raise ValueError(f"feature dimensions differ: {mx.shape[0]} and {my.shape[0]}")
    return frechet_from_moments(mx, cx, my, cy)


class DigitClassifier(nn.Module):
    """A small MLP classifier of 8x8 digits, 64 -> 256 -> 64 (features) -> 10.

    Input: (B, 64) or (B, 1, 8, 8) images scaled to [-1, 1] (the package's data range for digits).
    ``features(x)`` returns the (B, 64) ReLU activations of the last hidden layer, the space in
    which :func:`digit_frechet_distance` compares image sets; ``forward(x)`` returns (B, 10) logits.
    """

    feature_dim = 64

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, self.feature_dim), nn.ReLU())
        self.head = nn.Linear(self.feature_dim, 10)

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x[0].numel() != 64:
            raise ValueError(f"digit images must have shape (B, 64) or (B, 1, 8, 8); got {tuple(x.shape)}")
        return x.reshape(x.shape[0], 64)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 64) hidden features of images x (B, 64) or (B, 1, 8, 8) in [-1, 1]."""
        return self.body(self._flat(x).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 10) class logits."""
        return self.head(self.features(x))


def train_digit_classifier(x, y, *, seed: int = 0, steps: int = 400, lr: float = 3e-3,
                           weight_decay: float = 1e-4) -> DigitClassifier:
    """Train a :class:`DigitClassifier` deterministically (full-batch Adam, seeded init).

    Full-batch training has no data order to randomise, so the result depends only on ``seed``,
    the data and the torch build; it takes about a second on one CPU core for 1.4k images.

    Arguments:
        x: (n, 64) or (n, 1, 8, 8) images in [-1, 1]; y: (n,) integer labels in 0..9.
        seed: seed of the weight initialisation.
        steps: number of full-batch Adam steps; lr, weight_decay: its settings.
    Returns:
        the trained classifier in eval mode, on the CPU, float32.
    Raises:
        ValueError: shapes do not match or labels outside 0..9.
    Reference:
        The classifier-feature Frechet distance of Heusel et al. 2017 (FID), with a small
        classifier in place of Inception, as in score-based-model papers on small datasets.
    """
    x = torch.as_tensor(x).detach().cpu().float()
    y = torch.as_tensor(y).detach().cpu().long()
    if x.dim() < 2 or x.shape[0] != y.shape[0] or x[0].numel() != 64:
        raise ValueError(f"x must be (n, 64) or (n, 1, 8, 8) with one label per image; got x {tuple(x.shape)}, "
                         f"y {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) > 9:
        raise ValueError("labels y must lie in 0..9")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = DigitClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    xf = x.reshape(-1, 64)
    with torch.enable_grad():  # callers may hold no_grad (e.g. digit_frechet_distance)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(clf(xf), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval().requires_grad_(False)


_CLASSIFIERS: dict = {}


def digit_classifier(seed: int = 0) -> DigitClassifier:
    """The :class:`DigitClassifier` trained on the train split of ``scoresde.data``'s digits.

    Trained on first use with :func:`train_digit_classifier` (about a second) and cached in
    memory per ``seed``; nothing is downloaded or stored on disk.
    """
    if seed not in _CLASSIFIERS:
        x, y = _digits_split("train")
        _CLASSIFIERS[seed] = train_digit_classifier(x, y, seed=seed)
    return _CLASSIFIERS[seed]


def _digits_split(split: str):
    """(images (n, 1, 8, 8) in [-1, 1], labels (n,)) of the package's fixed digits split."""
    from sklearn.datasets import load_digits

    from . import data
    labels = torch.from_numpy(load_digits().target[data.digits_split(split)])
    return data.digits(split).data, labels


@torch.no_grad()
def digit_frechet_distance(samples, reference, classifier: DigitClassifier | None = None) -> float:
    """Frechet distance between two sets of 8x8 digit images in :class:`DigitClassifier` features.

    Arguments:
        samples: (n, 64) or (n, 1, 8, 8) images in [-1, 1] (e.g. generated ones), n >= 2.
        reference: (m, 64) or (m, 1, 8, 8) images in [-1, 1] (e.g. the test split).
        classifier: the feature extractor; default :func:`digit_classifier` ().
    Returns:
        float, the Frechet distance (squared feature units) of :func:`frechet_distance`.
        Its floor for a given set size is the distance between two real sets of that size
        (e.g. train vs test split); values are comparable only at equal set sizes.
    Raises:
        ValueError: wrong image shape, NaN/inf, fewer than 2 images.
    Reference:
        Heusel et al. 2017, Eq. (6), in the feature space of a small digit classifier.
    """
    clf = classifier if classifier is not None else digit_classifier()
    fx = clf.features(_as_cloud("samples", samples).float())
    fy = clf.features(_as_cloud("reference", reference).float())
    return frechet_distance(fx, fy)

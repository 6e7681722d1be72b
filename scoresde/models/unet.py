"""A DDPM++-style UNet (Song et al. 2021, App. H; Ho et al. 2020, App. B).

Layout, for ``ch_mult`` = (m_0, ..., m_{L-1}) and side s:

    conv3x3(in_channels -> ch)
    down, level l = 0..L-1 at side s / 2^l:  num_res_blocks ResBlocks (ch m_l channels), each followed
        by self-attention if the side is in ``attn_resolutions``; then a stride-2 conv3x3 (not after
        the last level)
    middle:  ResBlock, attention, ResBlock
    up, level l = L-1..0:  num_res_blocks + 1 ResBlocks, each taking the concatenation with the
        matching down-path activation; attention as above; nearest x2 + conv3x3 (not after level 0)
    GroupNorm, SiLU, conv3x3(ch -> out channels), zero-initialised

ResBlock (``ResnetBlockDDPMpp``): h = conv(SiLU(GN(x))); h += Dense(SiLU(temb));
h = conv0(dropout(SiLU(GN(h)))), conv0 zero-initialised; out = (skip(x) + h) / sqrt(2), skip a
1x1 conv when the channels change. Attention (``AttnBlockpp``): single head, 1x1 q, k, v and a
zero-initialised output projection, out = (x + h) / sqrt(2). GroupNorm with min(C / 4, 32)
groups. Time embedding: embedding(ch) -> Linear(ch, 4 ch) -> SiLU -> Linear(4 ch, 4 ch) (plus a
learned class embedding of num_classes + 1 rows with ``num_classes``, the last row the null
class). Other weights: DDPM's init (Xavier-uniform, zero
biases). With the zero-initialised output conv the network outputs exactly 0 at init.

Parameter counts (in_channels = 1 unless said, embedding "sinusoidal"; "fourier" is the same,
its frequencies are a buffer):
    UNet() defaults (ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16, side 32): 35,741,697
    the same with in_channels = 3 (DDPM's CIFAR-10 net, 35.7 M in Ho et al.):          35,746,307
    ch 64, ch_mult (1, 2, 2), 2 res blocks, attention at 16, side 32:                        6,469,889
    ch 32, ch_mult (1, 2), 1 res block, attention at 8, side 16:                               701,345
Reproduced by ``tests/test_models.py::test_documented_parameter_counts``.

Reference: Song et al. 2021, App. H (DDPM++: skip rescaling by 1/sqrt(2), residual blocks of
BigGAN-free DDPM type) and the reference code's ``models/ncsnpp.py`` / ``layerspp.py``;
Ho et al. 2020, App. B (the UNet, zero init, attention at 16x16); Ho & Salimans 2022 (the null
class of classifier-free guidance).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_choice, check_positive
from .embeddings import EMBEDDINGS, check_labels, check_time, make_embedding

_SQRT2 = math.sqrt(2.0)


def _groups(c: int) -> int:
    return min(c // 4, 32)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _zero(m: nn.Module) -> nn.Module:
    nn.init.zeros_(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)
    return m


class ResBlock(nn.Module):
    """DDPM++ residual block (see the module docstring). x (B, c_in, s, s), temb (B, temb_dim)."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, dropout: float):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(c_in), c_in, eps=1e-6)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.dense = nn.Linear(temb_dim, c_out)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        _init(self)
        _zero(self.conv1)

    def forward(self, x, temb):
        h = self.conv0(F.silu(self.norm0(x)))
        h = h + self.dense(temb)[:, :, None, None]
        h = self.conv1(self.drop(F.silu(self.norm1(h))))
        return ((self.skip(x) if self.skip is not None else x) + h) / _SQRT2


class AttnBlock(nn.Module):
    """Single-head self-attention over the s*s positions, skip rescaled by 1/sqrt(2)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(c), c, eps=1e-6)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        _init(self)
        _zero(self.proj)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj(h.transpose(1, 2).reshape(B, C, H, W))
        return (x + h) / _SQRT2


class UNet(nn.Module):
    """DDPM++-style UNet score network for images: x (B, C, s, s), time (B,) -> (B, C or 2C, s, s).

    Arguments:
        in_channels: image channels C (>= 1).
        image_size: side s of the (square) images; 8 <= s <= 256 and divisible by
            2^(len(ch_mult) - 1), the total down-sampling.
        ch: base channel count (a multiple of 4; ch * m of 128 or more a multiple of 32, for GroupNorm).
        ch_mult: channel multipliers per resolution level (one level per entry).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: sides at which self-attention is applied; each must be one of the
            sides the network reaches (s, s/2, ...). Default None: (16,) if the network
            reaches side 16 (DDPM's choice; s = 16 ... 128 with the default ch_mult), else the
            largest side it reaches below min(s, 16) (4 for s = 8 with the default ch_mult),
            else the smallest side it reaches below s (32 for s = 256), else () (a single
            level). The resolved tuple is what ``self.attn_resolutions`` and ``config()`` hold.
        dropout: dropout probability inside the residual blocks, in [0, 1).
        embedding: "sinusoidal" or "fourier" (see :mod:`scoresde.models.embeddings`).
        num_classes: None (unconditional), or the number of classes K of a class-conditional
            model: a learned label embedding of **K + 1** rows (``nn.Embedding(K + 1, 4 ch)``,
            added to the time embedding), rows 0..K-1 the classes and row K the **null class**
            (``self.null_class``), which ``y=None`` and dropped labels (``TrainConfig.label_dropout``,
            classifier-free guidance, Ho & Salimans 2022) map to. A model trained with
            label_dropout = 0 never sees the null class, so its y=None output is untrained.
        learn_variance: output 2C channels, the prediction then Improved DDPM's variance
            interpolation v (Nichol & Dhariwal 2021, Eq. (15)).
    Forward:
        ``forward(x, time, y=None)``: x (B, in_channels, image_size, image_size); time (B,) or a
        scalar, the output of :func:`scoresde.score.network_time`; y (B,) integer class labels in
        [0, num_classes] for a class-conditional model (num_classes = the null class; y=None is
        the null class for the whole batch); an unconditional model takes no y. Returns
        (B, C or 2C, s, s) in x's dtype.
    Raises:
        ValueError: constructor values the network cannot take (each names its argument); x of
            the wrong channels or side; time not of shape (B,); y given to an unconditional
            network, of the wrong shape or outside [0, num_classes].
        TypeError: non-integer sizes, y not an integer tensor.
    Reference: see the module docstring.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, ch: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=None, dropout: float = 0.0, embedding: str = "sinusoidal",
                 num_classes: int | None = None, learn_variance: bool = False):
        super().__init__()
        ch_mult, widths, sides, attn_resolutions = _layout(in_channels, image_size, ch, ch_mult, num_res_blocks,
                                                           attn_resolutions, dropout, embedding)
        if num_classes is not None:
            check_positive("num_classes", num_classes, integer=True)
        self.in_channels, self.image_size, self.ch, self.ch_mult = int(in_channels), int(image_size), int(ch), ch_mult
        self.num_res_blocks, self.attn_resolutions, self.dropout = int(num_res_blocks), attn_resolutions, float(dropout)
        self.embedding, self.num_classes, self.learn_variance = embedding, num_classes, bool(learn_variance)

        temb_dim = 4 * ch
        self.embed, self.temb = _time_embedding(embedding, ch)
        # num_classes + 1 rows: row num_classes is the null class (y=None, dropped labels)
        self.label_emb = nn.Embedding(num_classes + 1, temb_dim) if num_classes is not None else None
        self.conv_in, self.down, self.mid, skips, c = _encoder(in_channels, ch, widths, sides, num_res_blocks,
                                                               attn_resolutions, temb_dim, dropout)
        self.up = nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            w = widths[lvl]
            for _ in range(num_res_blocks + 1):
                blocks = [ResBlock(c + skips.pop(), w, temb_dim, dropout)]
                c = w
                if sides[lvl] in attn_resolutions:
                    blocks.append(AttnBlock(c))
                self.up.append(nn.ModuleList(blocks))
            if lvl > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              _init_m(nn.Conv2d(c, c, 3, padding=1))]))
        self.norm_out = nn.GroupNorm(_groups(c), c, eps=1e-6)
        self.conv_out = _zero(nn.Conv2d(c, 2 * in_channels if learn_variance else in_channels, 3, padding=1))

    @property
    def null_class(self) -> int | None:
        """The label index of the null class, ``num_classes`` (None for an unconditional network)."""
        return self.num_classes

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) with the class name under "model"."""
        return {"model": "UNet", "in_channels": self.in_channels, "image_size": self.image_size, "ch": self.ch,
                "ch_mult": list(self.ch_mult), "num_res_blocks": self.num_res_blocks,
                "attn_resolutions": list(self.attn_resolutions), "dropout": self.dropout,
                "embedding": self.embedding, "num_classes": self.num_classes, "learn_variance": self.learn_variance}

    def _check_input(self, x, y):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W); got {type(x).__name__}")
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, in_channels, image_size, image_size) = (B, {want[0]}, {want[1]}, "
                             f"{want[2]}) for this network; got shape {tuple(x.shape)}")
        return check_labels(y, x, self.num_classes)

    def forward(self, x: torch.Tensor, time, y: torch.Tensor | None = None) -> torch.Tensor:
        y = self._check_input(x, y)
        time = check_time(time, x)
        dtype = self.conv_in.weight.dtype
        temb = self.temb(self.embed(time).to(dtype))
        if self.label_emb is not None:
            temb = temb + self.label_emb(y)
        temb = F.silu(temb)
        h, hs = _encode(self, x.to(dtype), temb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = _run(blocks, h, temb)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h.to(x.dtype)


def _init_m(m: nn.Module) -> nn.Module:
    _init(m)
    return m


def _layout(in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions, dropout, embedding):
    """Check the constructor values shared by :class:`UNet` and the classifier's encoder; return
    (ch_mult tuple, widths ch * m_l, sides s / 2^l, the resolved attn_resolutions tuple)."""
    check_positive("in_channels", in_channels, integer=True)
    check_positive("image_size", image_size, integer=True)
    check_positive("ch", ch, integer=True)
    check_positive("num_res_blocks", num_res_blocks, integer=True)
    check_positive("dropout", dropout, allow_zero=True)
    check_choice("embedding", embedding, EMBEDDINGS)
    if dropout >= 1:
        raise ValueError(f"dropout must lie in [0, 1); got {dropout}")
    ch_mult = tuple(ch_mult)
    if not ch_mult:
        raise ValueError("ch_mult must hold at least one channel multiplier")
    for m in ch_mult:
        check_positive("ch_mult entries", m, integer=True)
    widths = [ch * m for m in ch_mult]
    for c in [ch, *widths]:
        if c % 4 or c % _groups(c):
            raise ValueError(f"ch * ch_mult entries must be multiples of 4 (and of 32 from 128 on), for "
                             f"GroupNorm with min(C/4, 32) groups; got a width of {c} from ch={ch}, ch_mult={ch_mult}")
    down = 2 ** (len(ch_mult) - 1)
    if not 8 <= image_size <= 256 or image_size % down:
        raise ValueError(f"image_size must lie in [8, 256] and be divisible by 2^(len(ch_mult) - 1) = {down} "
                         f"(the down-sampling of ch_mult={ch_mult}); got {image_size}")
    sides = [image_size // 2**lvl for lvl in range(len(ch_mult))]
    if attn_resolutions is None:
        below = [r for r in sides if r < image_size]
        small = [r for r in below if r < 16]
        attn_resolutions = (16,) if 16 in sides else (max(small),) if small else (min(below),) if below else ()
    attn_resolutions = tuple(int(r) for r in attn_resolutions)
    bad = [r for r in attn_resolutions if r not in sides]
    if bad:
        raise ValueError(f"attn_resolutions {bad} are not sides this network reaches; valid values are {sides}")
    return ch_mult, widths, sides, attn_resolutions


def _time_embedding(embedding: str, ch: int) -> tuple[nn.Module, nn.Module]:
    """(embedding(ch), Linear(ch, 4 ch) - SiLU - Linear(4 ch, 4 ch)) of the UNet's time input."""
    embed = make_embedding(embedding, ch)
    temb = nn.Sequential(nn.Linear(ch, 4 * ch), nn.SiLU(), nn.Linear(4 * ch, 4 * ch))
    _init(temb)
    return embed, temb


def _encoder(in_channels, ch, widths, sides, num_res_blocks, attn_resolutions, temb_dim, dropout):
    """The UNet's encoder half: (conv_in, down ModuleList, mid ModuleList, skip widths, out channels)."""
    conv_in = _init_m(nn.Conv2d(in_channels, ch, 3, padding=1))
    down = nn.ModuleList()
    skips, c = [ch], ch
    for lvl, w in enumerate(widths):
        for _ in range(num_res_blocks):
            blocks = [ResBlock(c, w, temb_dim, dropout)]
            c = w
            if sides[lvl] in attn_resolutions:
                blocks.append(AttnBlock(c))
            down.append(nn.ModuleList(blocks))
            skips.append(c)
        if lvl < len(widths) - 1:
            down.append(nn.ModuleList([_init_m(nn.Conv2d(c, c, 3, stride=2, padding=1))]))
            skips.append(c)
    mid = nn.ModuleList([ResBlock(c, c, temb_dim, dropout), AttnBlock(c), ResBlock(c, c, temb_dim, dropout)])
    return conv_in, down, mid, skips, c


def _encode(net: nn.Module, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Run ``net.conv_in``, ``net.down`` and ``net.mid`` on x (B, C, s, s): (the middle output,
    the down-path activations for the skips)."""
    h = net.conv_in(x)
    hs = [h]
    for blocks in net.down:
        h = _run(blocks, h, temb)
        hs.append(h)
    return _run(net.mid, h, temb), hs


def _run(blocks, h, temb):
    for b in blocks:
        h = b(h, temb) if isinstance(b, ResBlock) else b(h)
    return h


def small_unet(in_channels: int = 1, image_size: int = 8, *, ch: int = 16, num_classes: int | None = None,
               learn_variance: bool = False) -> UNet:
    """The small UNet of ``scoresde train --model unet`` and of ``scoresde demo``: a UNet sized for
    small images and CPU training.

    Against the CIFAR-sized :class:`UNet` defaults (35.7M parameters) it has ``ch`` base channels,
    two resolution levels (``ch_mult`` (1, 2)) below side 16 and three ((1, 2, 2)) from 16 on, one
    residual block per level up to side 16 and two above, and no attention. For the demo's 8x8
    digits (``small_unet(1, 8)``) that is 163,985 parameters (164,689 with ``num_classes=10``);
    after 3 000 updates it reaches about 1.9 bits/dim on the test digits where a 14x larger MLP
    on the flattened pixels gets about 2.8 (see :mod:`scoresde.cli.demo_presets`).

    Arguments:
        in_channels: image channels C (>= 1).
        image_size: side s of the square images (8 <= s <= 256; s divisible by 2, or by 4 from 16 on).
        ch: base channel count, a multiple of 4 (the CLI's ``--channels``, default 16).
        num_classes: None, or K for a class-conditional network (K + 1 label rows, the last the
            null class; see :class:`UNet`).
        learn_variance: 2C output channels (Improved DDPM's learned variance, ``--objective hybrid``).
    Returns:
        a freshly initialised :class:`UNet` (from torch's global RNG: seed it first, as
        ``scoresde train`` does with ``torch.manual_seed(seed)``), mapping x (B, C, s, s) and
        time (B,) to (B, C or 2C, s, s).
    Raises:
        ValueError / TypeError: values the UNet cannot take, each naming its argument.
    Reference: the DDPM++ UNet of Song et al. 2021, App. H, scaled down (see :class:`UNet`).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"image_size must be an integer; got {image_size!r}")
    return UNet(in_channels, image_size, ch=ch, ch_mult=(1, 2, 2) if image_size >= 16 else (1, 2),
                num_res_blocks=1 if image_size <= 16 else 2, attn_resolutions=(), learn_variance=learn_variance,
                num_classes=num_classes)

# %% [markdown]
# # Training on your own data
#
# Your data will be a folder of images or an array file, not scikit-learn's digits. This
# tutorial makes both from the digits (so that it runs anywhere, with nothing downloaded) and
# then trains on them the two ways `scoresde` offers: the `scoresde` command
# (`python3 -m scoresde train --data <folder or .npz> --out <run folder>`) and the Python API
# (`scoresde.data.image_folder`, `scoresde.data.from_array`, `scoresde.train`). It shows how a
# run resumes from its folder, how a checkpoint is loaded (`scoresde.load_score_model`) and
# sampled, and how the same command runs on 2 processes under torchrun.
#
# Everything is tiny (a few hundred updates of the training guide's small UNet on 8x8 images)
# so that it runs in minutes on one CPU core: the samples at the end show the plumbing works,
# not what a trained model looks like (for that, see `scoresde demo` or the training guide).
#
# Run: `python docs/tutorials/own_data.py` (full size, about 1.5 minutes on one core, torchrun
# included) or with `--quick` (about half a minute, without the torchrun run; the test suite runs
# it). Figures go to `--out` (default: next to this script); the run folders go to a temporary
# folder that is removed at the end.

# %%
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import scoresde  # noqa: E402
from scoresde.data import digits, from_array, image_folder, load_dataset  # noqa: E402
from scoresde.models import UNet  # noqa: E402
from scoresde.train import TrainConfig  # noqa: E402

FIGURES = ["own_data.png"]
parser = argparse.ArgumentParser(description="Training on your own data (scoresde tutorial)")
parser.add_argument("--quick", action="store_true", help="toy size, for the tests")
parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent)
args, _ = parser.parse_known_args()
args.out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
T0 = time.perf_counter()

CLI_STEPS = 30 if args.quick else 300       # updates of the command-line run (then as many again, resumed)
API_STEPS = 50 if args.quick else 300       # updates of the Python-API run (then as many again, resumed)
BATCH = 32 if args.quick else 64
TMP = tempfile.TemporaryDirectory(prefix="scoresde-own-data-")
WORK = pathlib.Path(TMP.name)
ENV = dict(os.environ, OMP_NUM_THREADS="1")
print(f"size: {'quick' if args.quick else 'full'}; command-line run {CLI_STEPS} + {CLI_STEPS} updates, "
      f"Python-API run {API_STEPS} + {API_STEPS}, batch {BATCH}; working in a temporary folder")

# %% [markdown]
# ## 1. Your data as files
#
# Two layouts are read:
#
# * **an image folder**: image files directly inside it (no labels), or, as here, one sub-folder
#   per class (`class_0/ ... class_9/`), which gives the labels: class k is the k-th sub-folder
#   name in sorted order, as in torchvision's `ImageFolder`. Images are read as 8-bit levels
#   (`mode="L"` grey or `"RGB"`), all of one size (or resized with `image_size=`);
# * **an array file**: `.npy`, or `.npz` with the images and optionally an integer array named
#   `labels`. Shapes (n, H, W), (n, C, H, W) (or (n, H, W, C) with `channels_last=True`) or
#   (n, d) vectors; `uint8` arrays are 256 levels, other integer arrays need `num_levels`, float
#   arrays are used as they are.
#
# The digits' 17 levels are stretched onto 0..255 so both files hold ordinary 8-bit images.

# %%
src = digits("train")
levels8 = np.rint(src.levels[:, 0].numpy() * 255.0 / 16).astype(np.uint8)     # (1500, 8, 8), 0..255
labels = src.labels.numpy()
folder = WORK / "digits_png"
for i, (img, y) in enumerate(zip(levels8, labels)):
    (folder / f"class_{y}").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(folder / f"class_{y}" / f"{i:04d}.png")
npz = WORK / "digits.npz"
np.savez(npz, images=levels8, labels=labels)
print(f"wrote {len(levels8)} PNG files into {len(list(folder.iterdir()))} class folders, and {npz.name} "
      f"({npz.stat().st_size // 1024} KiB: 'images' {levels8.shape} uint8, 'labels' {labels.shape})")

# %% [markdown]
# ## 2. The `scoresde` command
#
# `scoresde train` takes `--data` as `digits`, a 2-D toy name, or a path: a `.npy` / `.npz` file
# or an image folder. It picks the network from the data (`--model auto`: the UNet for square
# images of side >= 8, with `--channels` base channels), writes `checkpoint.pt`, `config.json`,
# `log.jsonl` and its own settings `train_args.json` into `--out`, and resumes when `--out`
# already holds a checkpoint. Here it runs in a subprocess exactly as you would type it
# (`python3 -m scoresde` is the `scoresde` script); the progress bar is turned off with `--quiet`.


# %%
def scoresde_cli(*argv, module=("-m", "scoresde")):
    cmd = [sys.executable, *module, *map(str, argv)]
    print("$ " + " ".join(["python3", *cmd[1:]]).replace(str(WORK), "$WORK"))
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=WORK, env=ENV, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in (proc.stdout + proc.stderr).splitlines():   # the command's summary lines, not warnings
        if line.startswith(("trained to", "scoresde train: resuming")):
            print("  " + line.replace(str(WORK), "$WORK"))
    return time.perf_counter() - t1


cli_run = WORK / "run_cli"
s = scoresde_cli("train", "--data", folder, "--out", cli_run, "--steps", CLI_STEPS, "--batch-size", BATCH,
                 "--quiet")
print(f"  ({s:.1f} s, start-up included); the run folder holds: {sorted(p.name for p in cli_run.iterdir())}")
saved = json.loads((cli_run / "train_args.json").read_text())
print(f"  train_args.json: data {pathlib.Path(saved['data']).name}, model {saved['model']}, channels "
      f"{saved['channels']}, objective {saved['objective']}, sde {saved['sde']}, steps {saved['steps']}")

# %% [markdown]
# ### Resume
#
# The same command on the same `--out` continues the run with its saved settings. Only `--steps`,
# `--checkpoint-every`, `--device` and `--quiet` may change; any other option typed with a new
# value is an error, so a resumed run cannot silently become a different one. Raising `--steps`
# trains further (without `--quiet`, the command says where it resumes from; at full size a third
# call with a changed `--lr` shows the refusal):

# %%
s = scoresde_cli("train", "--data", folder, "--out", cli_run, "--steps", 2 * CLI_STEPS)
log = [json.loads(line) for line in (cli_run / "log.jsonl").read_text().splitlines()]
cli_losses = [(r["step"], r["loss"]) for r in log if "loss" in r]
print(f"  ({s:.1f} s); log.jsonl now has {len(cli_losses)} loss lines, steps {cli_losses[0][0]} .. "
      f"{cli_losses[-1][0]}, one run")
if not args.quick:  # (one more process start-up: full size only)
    try:
        scoresde_cli("train", "--data", folder, "--out", cli_run, "--steps", 2 * CLI_STEPS, "--lr", "1e-4",
                     "--quiet")
    except RuntimeError as err:
        print("  refused: " + str(err).strip().splitlines()[-1].replace(str(WORK), "$WORK")[:300])

# %% [markdown]
# ## 3. The Python API
#
# `image_folder(path)` and `from_array(path)` return a `scoresde.data.Dataset`: the integer
# `levels` and `num_levels` (what bits/dim needs), the training floats `data` at the level
# centres (2k + 1)/256 - 1 in (-1, 1), and the labels with `num_classes` (and, for a folder,
# the class names). Its `config()` is what checkpoints store; `load_dataset(config)` reads the
# same data again.

# %%
ds_folder = image_folder(folder)
ds_npz = from_array(npz)
for name, ds in (("image_folder", ds_folder), ("from_array (.npz)", ds_npz)):
    print(f"{name:18s} {ds!r}")
order = torch.from_numpy(np.argsort(labels, kind="stable"))   # the folder's order: by class, then by file name
print(f"classes from the folder names: {ds_folder.classes[:3]} ... ; in the folder's order, the .npz gives the "
      f"same labels: {bool(torch.equal(ds_folder.labels, ds_npz.labels[order]))} and the same images: "
      f"{bool(torch.equal(ds_folder.levels, ds_npz.levels[order]))}")
print(f"ds_npz.config() = {json.dumps(ds_npz.config()).replace(str(WORK), '$WORK')}")
again = load_dataset(ds_npz.config())
print(f"load_dataset(config) gives the same levels: {bool(torch.equal(again.levels, ds_npz.levels))}")

# %% [markdown]
# Training is `scoresde.train(model, sde, objective, dataset, config)`, with the small UNet of the
# training guide and `TrainConfig.small(steps)` (settings scaled for small data; `out_dir` is
# where the checkpoint and log go). Calling `train` again with the same `out_dir` resumes: every
# setting that changes the result must match (`TrainConfig.small` derives its warm-up from the
# number of steps, so the longer run passes the first run's warm-up), and the resumed run ends
# **bit-identical** to an uninterrupted one, which is checked here against a run of
# 2 x API_STEPS updates in one go.

# %%
sde = scoresde.VPSDE()


def make_model():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    return scoresde.ScoreModel(net, sde)


api_run, straight_run = WORK / "run_api", WORK / "run_api_straight"
first = TrainConfig.small(API_STEPS, batch_size=BATCH, quiet=True, out_dir=str(api_run))
t1 = time.perf_counter()
r1 = scoresde.train(make_model(), sde, "dsm", ds_npz, first)
print(f"first call:   step {r1.step}, loss {r1.loss:.4f}, checkpoint {pathlib.Path(r1.checkpoint).name} "
      f"({time.perf_counter() - t1:.1f} s)")
longer = TrainConfig.small(2 * API_STEPS, warmup=first.warmup, batch_size=BATCH, quiet=True, out_dir=str(api_run))
r2 = scoresde.train(make_model(), sde, "dsm", ds_npz, longer)
print(f"second call:  step {r2.step}, loss {r2.loss:.4f} (resumed from step {r1.step})")
r3 = scoresde.train(make_model(), sde, "dsm", ds_npz,
                    TrainConfig.small(2 * API_STEPS, warmup=first.warmup, batch_size=BATCH, quiet=True,
                                      out_dir=str(straight_run)))
diff = max(float((a - b).detach().abs().max()) for a, b in zip(r2.model.parameters(), r3.model.parameters()))
print(f"uninterrupted {r3.step} updates: loss {r3.loss:.4f}; largest parameter difference to the resumed run: {diff:.1e}")
api_log = [json.loads(line) for line in (api_run / "log.jsonl").read_text().splitlines()]
api_losses = [(r["step"], r["loss"]) for r in api_log if "loss" in r]

# %% [markdown]
# ## 4. Loading a checkpoint
#
# `scoresde.load_score_model(path)` takes a `checkpoint.pt` or its run folder, whether the command
# or the API wrote it, and returns the score model (the EMA weights by default, in eval mode),
# its SDE and the run's config. Its output is an ordinary score function for `scoresde.sample`
# (and `scoresde.bits_per_dim`). The checkpoint's data config also rebuilds the training data.
# The samples use the stochastic Euler-Maruyama sampler with 200 steps. A sampler ends a little
# off the data range [-1, 1] on many pixels (the digits' black background sits at its edge);
# the shares printed below say how many pixels are inside it and how many within 0.2 of it (the
# figure clips them). At the quick size the networks are barely trained and the samples are
# noise; at full size they are rough digits.

# %%
samples = {}
for name, run in (("command line (image folder)", cli_run), ("Python API (.npz)", api_run)):
    score, run_sde, cfg = scoresde.load_score_model(run, quiet=True)
    with torch.no_grad():
        x = scoresde.sample(score, run_sde, (36, 1, 8, 8), method="euler_maruyama", steps=200,
                            generator=torch.Generator().manual_seed(0))
    samples[name] = x
    data = load_dataset(cfg["data"])
    print(f"{name}: {type(run_sde).__name__}, {sum(p.numel() for p in score.parameters())} parameters, "
          f"trained {cfg['train']['steps']} updates, data {data!r}; samples: mean {float(x.mean()):+.2f}, "
          f"std {float(x.std()):.2f}, {float((x.abs() <= 1).double().mean()):.0%} of pixels in [-1, 1], "
          f"{float((x.abs() <= 1.2).double().mean()):.0%} in [-1.2, 1.2]")

# %% [markdown]
# ## 5. Two processes with torchrun
#
# The command (and `scoresde.train`) runs data-parallel under torchrun unchanged: each process
# takes its share of every batch (`--batch-size` is the global batch), gradients are averaged,
# and only rank 0 writes the run folder. On CPU the processes talk over gloo; with CUDA each
# takes `cuda:LOCAL_RANK`. The command is:
#
#     python3 -m torch.distributed.run --nproc_per_node=2 -m scoresde train --data digits.npz --out run_ddp ...
#
# It runs here only at full size (two more Python processes do not fit the quick size's time).

# %%
if args.quick:
    print("quick size: torchrun skipped (run without --quick to run it)")
else:
    ddp_run = WORK / "run_ddp"
    s = scoresde_cli("-m", "scoresde", "train", "--data", npz, "--out", ddp_run, "--steps", 100, "--batch-size",
                     BATCH, "--quiet", module=("-m", "torch.distributed.run", "--nproc_per_node=2"))
    ddp_log = [json.loads(line) for line in (ddp_run / "log.jsonl").read_text().splitlines()]
    print(f"  ({s:.1f} s for 2 processes, start-up included); rank 0 wrote {sorted(p.name for p in ddp_run.iterdir())}; "
          f"last logged loss {[r['loss'] for r in ddp_log if 'loss' in r][-1]:.4f}")

# %% [markdown]
# (On this 2-core machine two processes are not faster than one for so small a network: their
# share of the work is smaller than the cost of averaging gradients. torchrun pays off for large
# networks, one GPU per process.)

# %%
fig = plt.figure(figsize=(13, 4.2))


def tile(x, rows=6):
    """A rows x rows grid of (1, 8, 8) images with a 1-pixel gap."""
    x = torch.nn.functional.pad(x[: rows * rows, 0], (0, 1, 0, 1), value=-1.0)
    return torch.cat([torch.cat(list(x[r * rows:(r + 1) * rows]), 1) for r in range(rows)], 0)


ax = fig.add_subplot(1, 4, 1)
ax.imshow(tile(ds_folder.data[torch.randperm(len(ds_folder), generator=torch.Generator().manual_seed(0))]),
          cmap="gray", vmin=-1, vmax=1)
ax.set_title("the image folder (training data)", fontsize=9)
ax.axis("off")
for i, (name, x) in enumerate(samples.items()):
    ax = fig.add_subplot(1, 4, 2 + i)
    ax.imshow(tile(x.clamp(-1, 1)), cmap="gray", vmin=-1, vmax=1)
    ax.set_title(f"samples, {name}\n(loaded checkpoint, Euler-Maruyama, 200 steps)", fontsize=9)
    ax.axis("off")
ax = fig.add_subplot(1, 4, 4)
for (name, losses), half in (((f"command line, resumed at {CLI_STEPS}", cli_losses), CLI_STEPS),
                              ((f"Python API, resumed at {API_STEPS}", api_losses), API_STEPS)):
    line, = ax.plot(*zip(*losses), label=name, lw=1)
    ax.axvline(half, color=line.get_color(), ls=":", lw=1)
ax.set_yscale("log")
ax.set_xlabel("update")
ax.set_ylabel("training loss (log.jsonl)")
ax.set_title("one log across the resume", fontsize=9)
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(args.out / "own_data.png", dpi=80)
plt.close(fig)
TMP.cleanup()
print(f"(size: {'quick' if args.quick else 'full'}; {time.perf_counter() - T0:.0f} s)")

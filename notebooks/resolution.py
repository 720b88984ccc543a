# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Target resolution vs. model-inversion leakage
#
# **Question.** MIBench (Qiu et al., arXiv 2410.05159) finds that attacks behave differently at
# different target resolutions: generative attacks that work at 64 px lose much of their success
# at higher resolutions, where the latent search has more pixels to get right. Here the whole
# pipeline is rebuilt at each resolution: the private and public data, the target (one per seed),
# the evaluator, the delta_face extractor and the GAN prior, and every attack runs against each
# target under the same protocol.
#
# **What the embedded default can and cannot show.** MNIST digits are 28 px: at 32 and 64 px the
# images are upsampled, so the larger targets see *no new detail*, only more pixels. On them the
# study measures how the cost of resolution itself (bigger search spaces, a prior trained on more
# pixels, a differently sized target) changes attack success; it cannot show the effect the paper
# is about, that fine detail (faces at 128 px and more) is harder to recover. For that, run the
# CelebA configuration (`parameters/resolution/celeba.yaml`, GPU). Metrics in a network's feature
# space (delta_eval, delta_face, fid_eval) come from a different evaluator at each resolution: compare
# their trends, not their values across resolutions; Acc@1 and Acc@5 are comparable.
#
# **Run:** `mibench run parameters/resolution/default.yaml`; "Run All" in JupyterLab runs the same
# configuration (the defaults below are `default.yaml`'s).

# %%
import matplotlib.pyplot as plt
import pandas as pd

from mibench_lib import plots
from mibench_lib.studies.engine import Arm, open_study, show
from mibench_lib.studies.jobs import TargetRef

# %% tags=["parameters"]
# Injected by the runner (mibench run): where this configuration writes its outputs.
study = "resolution"  # study name (folder under outputs/)
config = "interactive"  # parameters-file stem
out_dir = "outputs/resolution/interactive"  # output folder of this run

# Data
dataset = "mnist5k"  # key of mibench_lib.data.DATASETS
dataset_kwargs = {}  # keyword arguments of the loader but resolution (real data: root, ...)
classes = []  # private classes to attack; [] = all
samples_per_class = 1  # label entries per class handed to each attack

# Trained artifacts (cached by a hash of their configuration)
device = "auto"  # "auto", "cpu" or "cuda"
workers = 0  # processes side by side (0: one per CPU thread, at most 8; 1: this one)
cache_dir = ""  # artifact cache folder; empty: $MIBENCH_CACHE, else .mibench-cache
model_seed = 0  # seeds the evaluator, the delta_face extractor and the GAN
target_arch = "mnist_cnn"  # key of mibench_lib.models.MODELS
evaluator_arch = "mnist_eval"  # evaluation model, trained on all classes of the dataset
evaluator_train = {"epochs": 8, "batch_size": 64, "lr": 0.001}
face_arch = "mnist_resnet"  # second, independent feature extractor behind delta_face
face_train = {"epochs": 6, "batch_size": 64, "lr": 0.001}
face_weights = ""  # local weights of face_arch (a face-recognition net): used as is
gan = {"latent_dim": 100, "width": 8, "critic_width": 8}  # DCGAN generator / WGAN-GP critic
gan_train = {"epochs": 100, "batch_size": 64, "n_critic": 5, "gp_weight": 10.0}

# Attacks
seeds = [0, 1, 2]  # one target training run and one attack run per seed
attacks = ["gmi", "brep_mi", "miface", "deepinversion"]  # keys of mibench_lib.attacks.ATTACKS
baselines = ["random_latent", "blank_image", "mean_public"]  # scored like attacks, no queries
attack_kwargs = {
    "gmi": {"steps": 1500, "lr": 0.01, "loss_divisor": 5, "restarts": 5, "select": "all"},
    "brep_mi": {"max_stale_iters": 1000, "max_radius": 30.0, "missing_start": "random"},
    "miface": {"lr": 0.1, "max_iter": 5000, "window": 100, "threshold": 0.99},
    "deepinversion": {
        "iterations": 2000, "lr": 0.05, "betas": [0.9, 0.999], "schedule": "constant",
        "warmup": 0, "clip": False, "jitter": 2, "flip": False, "r_feature": 10.0,
        "first_bn_multiplier": 1.0, "tv_l2": 2.5e-5, "l2": 0.0, "mean": 0.5, "std": 0.5,
    },
}  # fmt: skip
prior_kwargs = {}  # target prior -> keyword arguments of its build (attacks' TargetPrior)
query_budgets = {}  # attack -> maximum number of target queries (absent: unlimited)
inception_weights = ""  # local Inception-v3 weights for FID; empty: evaluator features
progress = True  # progress bars

# This study
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001}  # train_classifier keyword arguments
resolutions = [16, 32, 64]  # target resolutions (px); each gets its own data, models and GAN
per_resolution = {}  # resolution -> parameter overrides, e.g. {64: {"gan_train": {...}}}

# %%
# Largest first: its GAN trains longest, so it starts first.
variants = {str(r): {"dataset_kwargs": {"resolution": r}, **per_resolution.get(r, {})}
            for r in sorted(resolutions, reverse=True)}  # fmt: skip
bench = open_study(globals(), variants=variants)
splits = [{"resolution": r, **bench.settings[str(r)].split.summary()} for r in resolutions]
show(pd.DataFrame(splits).to_markdown(index=False))

# %% [markdown]
# ## Every resolution x seed x attack

# %%
refs = {(r, s): TargetRef(target_arch, target_train, s) for r in resolutions for s in seeds}
targets = bench.targets(refs, variant={key: str(key[0]) for key in refs})
arms = [Arm({"resolution": r}, ref, s, columns={"natural_acc": targets[r, s].natural_acc},
            variant=str(r)) for (r, s), ref in refs.items()]  # fmt: skip
df = bench.run(arms)
show(bench.describe())

# %%
fig, axes = plt.subplots(1, len(resolutions), figsize=(5 * len(resolutions), 2.6), squeeze=False)
for ax, r in zip(axes[0], resolutions):
    plots.plot_image_grid(bench.gan_samples(32, variant=str(r)), nrow=8, ax=ax, title=f"{r} px")
fig.suptitle("GAN prior at each resolution: random samples (public digits only)")
bench.save(fig, "gan_samples")
plt.show()

# %% [markdown]
# ## Results: mean ± std over seeds

# %%
METRICS = ["natural_acc", "target_acc", "acc1", "acc5", "acc1_selected", "delta_eval",
           "delta_face", "fid_eval", "fid_inception", "precision", "recall", "density",
           "coverage", "queries", "wall_time_s"]  # fmt: skip
bench.table(df, ["attack", "resolution"], METRICS)
bench.paired(df, "attack", "random_latent", ["resolution"], name="paired_vs_random_latents",
             caption="Acc@1 minus random latents' on the same target and seed [95 % interval]; "
             "`supported`: the interval excludes 0")  # fmt: skip

# %%
curves = df[~df["attack"].isin(["blank_image", "mean_public"])]
panels = [("acc1", "evaluator Acc@1"), ("acc5", "evaluator Acc@5"), ("target_acc", "target's own accuracy"),
          ("delta_eval", "delta_eval (per-resolution evaluator)"), ("fid_eval", "FID (evaluator features)"),
          ("natural_acc", "target test accuracy")]  # fmt: skip
fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
for ax, (y, label) in zip(axes.flat, panels):
    rows = (
        df.drop_duplicates(["resolution", "seed"]).assign(attack="target")
        if y == "natural_acc"
        else curves
    )
    plots.plot_trend(rows, x="resolution", y=y, ax=ax, ylabel=label, band=True,
                     floors=bench.floors(df[df["attack"] != "random_latent"]) if y == "acc1" else None)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(resolutions, [f"{r} px" for r in resolutions])
fig.suptitle("Each metric against target resolution: mean over seeds, bands: 95 % intervals")
fig.tight_layout()
bench.save(fig, "metrics_vs_resolution")
plt.show()

# %% [markdown]
# ## Reconstructions at each resolution beside real private samples (seed 0)

# %%
for r in resolutions:
    rows = bench.grid_rows({a: ({"resolution": r}, a, seeds[0]) for a in baselines + attacks})
    fig = plots.plot_reconstruction_grid(rows, bench.settings[str(r)].split.private_train,
                                         bench.classes, per_class=2, title=f"{r} px (seed {seeds[0]})")  # fmt: skip
    bench.save(fig, f"reconstructions_{r}px")
    plt.show()

# %% [markdown]
# ### Browse interactively (JupyterLab)
# Pick a resolution, an attack and a seed to see every reconstruction of that run.

# %%
bench.browse(df, ["resolution"])
bench.close()

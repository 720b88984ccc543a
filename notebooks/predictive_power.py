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
# # Model predictive power vs. model-inversion leakage
#
# **Question.** Does a more accurate target leak more about its private classes? MIBench (Qiu et
# al., arXiv 2410.05159) reports that attack success grows with the target's predictive power.
# Here one target architecture is checkpointed the first time its test accuracy crosses each
# threshold, and every attack is run against every checkpoint, for several seeds (each seed trains
# its own target and seeds the attacks).
#
# **Protocol.** The attacker reaches each checkpoint only through a `TargetOracle` at the access
# level its threat model grants (GMI and MIFace: white-box; BREP-MI: label-only), which counts
# queries. Reconstructions are scored by an *evaluator* of a different architecture trained on
# **all** classes of the dataset (for `mnist5k`: all ten digits), so an image that looks like a
# public digit is a failure. Next to each attack, *random latents* through the same generator, a
# blank image and the mean public image are scored the same way.
#
# **Run:** `mibench run parameters/predictive_power/default.yaml` (headless, papermill) or open
# this notebook in JupyterLab and run all cells: the defaults below are `default.yaml`'s.

# %%
from dataclasses import replace

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from mibench_lib import plots
from mibench_lib.studies.engine import Arm, open_study, show
from mibench_lib.studies.jobs import TargetRef

# %% tags=["parameters"]
# Injected by the runner (mibench run): where this configuration writes its outputs.
study = "predictive_power"  # study name (folder under outputs/)
config = "interactive"  # parameters-file stem
out_dir = "outputs/predictive_power/interactive"  # output folder of this run

# Data
dataset = "mnist5k"  # key of mibench_lib.data.DATASETS
dataset_kwargs = {"resolution": 32}  # keyword arguments of the loader (real data: root, ...)
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
attacks = ["gmi", "brep_mi", "miface"]  # keys of mibench_lib.attacks.ATTACKS
baselines = ["random_latent", "blank_image", "mean_public"]  # scored like attacks, no queries
attack_kwargs = {
    "gmi": {"steps": 1500, "lr": 0.01, "loss_divisor": 5, "restarts": 5, "select": "all"},
    "brep_mi": {"max_stale_iters": 1000, "max_radius": 30.0, "missing_start": "random"},
    "miface": {"lr": 0.1, "max_iter": 5000, "window": 100, "threshold": 0.99},
}
prior_kwargs = {}  # target prior -> keyword arguments of its build (attacks' TargetPrior)
query_budgets = {}  # attack -> maximum number of target queries (absent: unlimited)
inception_weights = ""  # local Inception-v3 weights for FID; empty: evaluator features
progress = True  # progress bars

# This study
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001, "eval_every": 2}  # eval_every: steps
thresholds = [0.6, 0.9, 0.99]  # checkpoint the first time test accuracy reaches each

# %%
bench = open_study(globals())
show(pd.DataFrame([bench.split.summary()]).to_markdown(index=False))

# %% [markdown]
# ## Attacks on every checkpoint
#
# One row per attack x checkpoint x seed is appended to `results.csv` as soon as it is computed,
# and the reconstructions are saved beside it: an interrupted run resumes where it stopped.

# %%
runs = {s: TargetRef(target_arch, target_train, s, thresholds=tuple(thresholds)) for s in seeds}
arms = []
for seed, ckpts in bench.targets(runs).items():
    missing = sorted(set(map(float, thresholds)) - {c.threshold for c in ckpts})
    if missing:
        show(f"**Seed {seed}: the target never reached thresholds {missing}.**")
    for ck in ckpts:
        ref = replace(runs[seed], threshold=ck.threshold)
        columns = {"target_test_acc": ck.test_acc, "target_step": ck.step}
        arms.append(Arm({"threshold": ck.threshold}, ref, seed, columns=columns))
df = bench.run(arms)
show(bench.describe())

# %%
ax = plots.plot_image_grid(bench.gan_samples(), nrow=16, title="GAN prior: random samples")
bench.save(ax.figure, "gan_samples")
plt.show()

# %% [markdown]
# ## Results: mean ± std over seeds

# %%
METRICS = ["target_test_acc", "target_acc", "acc1", "acc5", "acc1_selected", "delta_eval",
           "delta_face", "fid_eval", "fid_inception", "precision", "recall", "density",
           "coverage", "queries", "wall_time_s"]  # fmt: skip
bench.table(df, ["attack", "threshold"], METRICS)
bench.paired(df, "attack", "random_latent", ["threshold"], name="paired_vs_random_latents",
             caption="Acc@1 minus random latents' on the same target and seed [95 % interval]; "
             "`supported`: the interval excludes 0")  # fmt: skip

# %%
df["target accuracy"] = df.groupby("threshold")["target_test_acc"].transform("mean").round(3)
curves = df[~df["attack"].isin(["blank_image", "mean_public"])]
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
for ax, (y, label, title) in zip(axes, [
    ("acc1", "evaluator Acc@1", "Attack accuracy vs. target accuracy"),
    ("delta_eval", "delta_eval (lower = closer)", "Feature distance to private data"),
    ("target_acc", "target's own accuracy", "Reconstructions that fool the target"),
]):  # fmt: skip
    floors = bench.floors(df[df["attack"] != "random_latent"]) if y == "acc1" else None
    plots.plot_trend(curves, x="target accuracy", y=y, ax=ax, ylabel=label, title=title,
                     floors=floors)  # fmt: skip
fig.suptitle("Mean over seeds, error bars: 95 % intervals")
bench.save(fig, "trends")
plt.show()

# %%
top = df[df["threshold"] == df["threshold"].max()]
scorers = {"target_acc": "target (top-1)", "acc1": "evaluator Acc@1", "acc5": "evaluator Acc@5"}
long = top.melt(id_vars=["attack", "seed"], value_vars=list(scorers), var_name="scored by",
                value_name="accuracy")  # fmt: skip
long["scored by"] = long["scored by"].map(scorers)
fig, ax = plt.subplots(figsize=(7, 4))
sns.barplot(data=long, x="attack", y="accuracy", hue="scored by", errorbar=("ci", 95), ax=ax)
ax.set_ylim(0, 1.02)
ax.tick_params(axis="x", rotation=30)
ax.set_title("Most accurate checkpoint: fooling the target vs. convincing the evaluator (95 % CI)")
bench.save(fig, "target_vs_evaluator")
plt.show()

# %% [markdown]
# ## Reconstructions beside real private samples

# %%
for thr in sorted(df["threshold"].unique()):
    rows = bench.grid_rows({a: ({"threshold": thr}, a, seeds[0]) for a in baselines + attacks})
    acc = df.loc[df["threshold"] == thr, "target_test_acc"].mean()
    fig = plots.plot_reconstruction_grid(
        rows, bench.split.private_train, bench.classes, per_class=2,
        class_names=bench.split.class_names, title=f"Target test accuracy {acc:.3f} (seed {seeds[0]})",
    )  # fmt: skip
    bench.save(fig, f"reconstructions_t{thr:g}")
    plt.show()

# %% [markdown]
# ### Browse interactively (JupyterLab)
# Pick a checkpoint, an attack and a seed to see every reconstruction of that run.

# %%
bench.browse(df, ["threshold"])
bench.close()

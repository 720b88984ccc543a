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
# # Adversarial robustness vs. model inversion
#
# **Question.** Targets trained adversarially (Madry et al., ICLR 2018: PGD in L-inf and L2) are
# reported to have perceptually aligned gradients. Does that make inversion easier, in particular
# for prior-free attacks such as MIFace that follow the target's input gradient directly? Each
# target is adversarially trained at each epsilon of the grid (epsilon 0 = the standard recipe),
# its clean and PGD robust accuracy are reported, and every attack runs against it.
#
# **Run:** `mibench run parameters/adversarial_robustness/default.yaml`; "Run All" in JupyterLab
# runs the same configuration (the defaults below are `default.yaml`'s).

# %%
import math

import matplotlib.pyplot as plt
import pandas as pd

from mibench_lib import plots
from mibench_lib.studies.engine import Arm, open_study, show
from mibench_lib.studies.jobs import TargetRef, target_robust_accuracy

# %% tags=["parameters"]
# Injected by the runner (mibench run): where this configuration writes its outputs.
study = "adversarial_robustness"  # study name (folder under outputs/)
config = "interactive"  # parameters-file stem
out_dir = "outputs/adversarial_robustness/interactive"  # output folder of this run

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
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001}  # train_classifier keyword arguments
eps_grid = {"linf": [0.1, 0.3], "l2": [2.0]}  # adversarial-training radii per norm (0 is added)
at_kwargs = {"steps": 5, "eval_steps": 20}  # further keyword arguments of the defense

# %%
bench = open_study(globals())
show(pd.DataFrame([bench.split.summary()]).to_markdown(index=False))

# %% [markdown]
# ## Every (norm, epsilon) x seed x attack

# %%
grid = [("none", 0.0)] + [(norm, float(e)) for norm, eps in eps_grid.items() for e in eps]
refs = {
    (norm, eps, seed): TargetRef(target_arch, target_train, seed)
    if norm == "none"
    else TargetRef(target_arch, target_train, seed, defense_name="adversarial_training",
                   defense_kwargs={"eps": eps, "norm": norm, **at_kwargs})
    for norm, eps in grid for seed in seeds
}  # fmt: skip
targets = bench.targets(refs)
# The standard target's PGD robust accuracy at each training radius, next to the robust model's.
undefended = bench.map(target_robust_accuracy, {
    (norm, eps, seed): {"ref": refs["none", 0.0, seed], "eps": eps, "norm": norm,
                        "steps": at_kwargs.get("eval_steps", 20), "seed": seed}
    for norm, eps, seed in refs if norm != "none"
})  # fmt: skip
arms = [
    Arm({"norm": norm, "eps": eps}, ref, seed, baselines=norm == "none", columns={
        "natural_acc": targets[norm, eps, seed].natural_acc,
        "robust_acc": targets[norm, eps, seed].extra.get("robust_acc", math.nan),
        "undefended_robust_acc": undefended.get((norm, eps, seed), math.nan)})
    for (norm, eps, seed), ref in refs.items()
]  # fmt: skip
df = bench.run(arms)
show(bench.describe())

# %% [markdown]
# ## Results: mean ± std over seeds

# %%
METRICS = ["natural_acc", "robust_acc", "target_acc", "acc1", "acc5", "delta_eval", "delta_face",
           "fid_eval", "fid_inception"]  # fmt: skip
bench.table(df, ["attack", "norm", "eps"], METRICS)
df["target"] = [f"{n} {e:g}" for n, e in zip(df["norm"], df["eps"])]
bench.paired(df[df["attack"].isin(attacks)], "target", "none 0", ["attack"],
             name="paired_vs_standard", caption="Acc@1 against each robust target minus against "
             "the standard one, same seeds [95 % interval]; `supported`: the interval excludes 0")  # fmt: skip

# %%
attack_rows = df[df["attack"].isin(attacks)]
standard = attack_rows[attack_rows["norm"] == "none"]
fig, axes = plt.subplots(2, len(eps_grid), figsize=(5.5 * len(eps_grid), 8), squeeze=False)
for j, norm in enumerate(eps_grid):
    sub = pd.concat([standard.assign(norm=norm), attack_rows[attack_rows["norm"] == norm]])
    plots.plot_trend(sub, x="eps", y="acc1", ax=axes[0][j], ylabel="evaluator Acc@1",
                     title=f"{norm}: attack accuracy vs. training epsilon",
                     floors=bench.floors(df))  # fmt: skip
    plots.plot_trend(sub, x="eps", y="delta_eval", ax=axes[1][j],
                     ylabel="delta_eval (lower = closer)",
                     title=f"{norm}: feature distance vs. training epsilon")  # fmt: skip
fig.tight_layout()
bench.save(fig, "attack_vs_epsilon")
plt.show()
accuracy = ["natural_acc", "robust_acc", "undefended_robust_acc"]
acc = df.drop_duplicates(["norm", "eps", "seed"]).groupby(["norm", "eps"])[accuracy].mean()
bench.report(acc.reset_index(), "clean_and_robust_accuracy", "Clean and PGD robust accuracy")

# %% [markdown]
# ## Reconstructions across epsilon (seed 0)

# %%
for name in attacks:
    rows = bench.grid_rows({f"{norm} eps={eps:g}": ({"norm": norm, "eps": eps}, name, seeds[0])
                            for norm, eps in grid})  # fmt: skip
    title = f"{name} against adversarially trained targets"
    fig = plots.plot_reconstruction_grid(rows, bench.split.private_train, bench.classes,
                                         per_class=1, title=title)  # fmt: skip
    bench.save(fig, f"reconstructions_{name}")
    plt.show()

# %% [markdown]
# ### Browse interactively (JupyterLab)
# Pick a norm, an epsilon, an attack and a seed to see every reconstruction of that run.

# %%
bench.browse(df, ["norm", "eps"])
bench.close()

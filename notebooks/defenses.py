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
# # Defenses: how much does each one lower what an attacker recovers, and at what cost?
#
# Every defense is trained (or, for output processing, applied at the oracle) with the same target
# architecture and recipe; for each defense and knob value, every attack runs against it for
# several seeds. Natural accuracy on the private test set is the utility; evaluator Acc@1, Acc@5,
# delta_eval and the target's own accuracy on the reconstructions measure leakage.
#
# Threat models matter here: output-processing defenses (rounding, top-k, label-only, noise)
# change only what a black-box oracle releases, so **white-box attacks (GMI, MIFace) bypass them
# by definition** and BREP-MI, which already uses labels only, is unaffected by all but the noise.
# The tables keep the white-box, black-box and label-only families apart for this reason. Such an
# attack against such a deployment observes exactly what it observes against the undefended
# target (the oracle hands a white-box attacker the model itself), so the same seeded run is
# computed once and reported under both defenses, marked in the column `same_run_as`;
# `reuse_identical_runs = False` recomputes it (with the same numbers).
#
# DP-SGD's epsilon is example-level: it bounds what one training image reveals. Model inversion
# recovers what a whole class shares, which no per-example guarantee covers (a class of k images
# is protected only at roughly k x epsilon).
#
# **Run:** `mibench run parameters/defenses/default.yaml`; "Run All" in JupyterLab runs the same
# configuration (the defaults below are `default.yaml`'s).

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from mibench_lib import plots
from mibench_lib.attacks import ATTACK_ACCESS
from mibench_lib.defenses import DEFENSE_KIND, layer_fisher_information
from mibench_lib.studies.engine import Arm, open_study, show
from mibench_lib.studies.harness import FAMILY
from mibench_lib.studies.jobs import TargetRef, defense_columns, defense_label

# %% tags=["parameters"]
# Injected by the runner (mibench run): where this configuration writes its outputs.
study = "defenses"  # study name (folder under outputs/)
config = "interactive"  # parameters-file stem
out_dir = "outputs/defenses/interactive"  # output folder of this run

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
attacks = ["gmi", "brep_mi"]  # keys of mibench_lib.attacks.ATTACKS
baselines = ["random_latent", "blank_image", "mean_public"]  # scored like attacks, no queries
attack_kwargs = {
    "gmi": {"steps": 1500, "lr": 0.01, "loss_divisor": 5, "restarts": 5, "select": "all"},
    "brep_mi": {"max_stale_iters": 1000, "max_radius": 30.0, "missing_start": "random"},
}
prior_kwargs = {}  # target prior -> keyword arguments of its build (attacks' TargetPrior)
query_budgets = {}  # attack -> maximum number of target queries (absent: unlimited)
inception_weights = ""  # local Inception-v3 weights for FID; empty: evaluator features
progress = True  # progress bars

# This study
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001}  # train_classifier keyword arguments
# [{name, kwargs, attacks (optional subset)}] from mibench_lib.defenses.DEFENSES
defenses = [
    {"name": "none"},
    {"name": "mid", "kwargs": {"beta": 0.003}, "attacks": ["gmi"]},
    {"name": "mid", "kwargs": {"beta": 0.01}},
    {"name": "mid", "kwargs": {"beta": 0.03}, "attacks": ["gmi"]},
    {"name": "bido", "kwargs": {"measure": "coco", "lambda_x": 0.5, "lambda_y": 25.0}, "attacks": ["gmi"]},
    {"name": "bido", "kwargs": {"measure": "coco", "lambda_x": 1.0, "lambda_y": 50.0}, "attacks": ["gmi"]},
    {"name": "bido", "kwargs": {"measure": "coco", "lambda_x": 2.0, "lambda_y": 100.0}, "attacks": ["gmi"]},
    {"name": "label_smoothing", "kwargs": {"alpha": -0.01}, "attacks": ["gmi"]},
    {"name": "label_smoothing", "kwargs": {"alpha": -0.05}},
    {"name": "label_smoothing", "kwargs": {"alpha": -0.1}, "attacks": ["gmi"]},
    {"name": "tl_dmi", "kwargs": {"frozen_fraction": 0.5}, "attacks": ["gmi"]},
    {"name": "dp_sgd", "kwargs": {"noise_multiplier": 0, "max_grad_norm": None}, "attacks": ["gmi"]},
    {"name": "dp_sgd", "kwargs": {"noise_multiplier": 0.5, "max_grad_norm": 1.0}, "attacks": ["gmi"]},
    {"name": "dp_sgd", "kwargs": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}},
    {"name": "dp_sgd", "kwargs": {"noise_multiplier": 2.0, "max_grad_norm": 1.0}, "attacks": ["gmi"]},
    {"name": "rounding", "kwargs": {"decimals": 1}},
    {"name": "label_only"},
]  # fmt: skip
fisher = True  # per-layer Fisher information of the undefended and TL-DMI targets (needs tl_dmi)
reuse_identical_runs = True  # run an attack once when two defenses release exactly the same thing

# %%
bench = open_study(globals())
show(pd.DataFrame([bench.split.summary()]).to_markdown(index=False))

# %% [markdown]
# ## Every defense x seed x attack

# %%
specs = {defense_label(spec): spec for spec in defenses}
refs = {(label, seed): TargetRef(target_arch, target_train, seed, defense_name=spec["name"],
                                 defense_kwargs=spec.get("kwargs", {}))
        for label, spec in specs.items() for seed in seeds}  # fmt: skip
targets = bench.targets(refs)
reference = defense_label(defenses[0])  # the trivial floors are scored once per seed, on this one
arms = [Arm({"defense_label": label}, ref, seed, columns=defense_columns(targets[label, seed]),
            attacks=specs[label].get("attacks"), baselines=label == reference, through_defense=True)
        for (label, seed), ref in refs.items()]  # fmt: skip
df = bench.run(arms, reuse=reuse_identical_runs)
show(bench.describe())

# %% [markdown]
# ## Results: mean ± std over seeds

# %%
METRICS = ["natural_acc", "target_acc", "acc1", "acc5", "delta_eval", "delta_face", "fid_eval",
           "fid_inception", "queries"]  # fmt: skip
extra = [c for c in df if c.startswith("defense_") and c not in ("defense_label", "defense_kind")
         and pd.api.types.is_numeric_dtype(df[c])]  # fmt: skip
bench.table(df, ["family", "attack", "defense_label"], METRICS + extra)
attacked = df[df["attack"].isin(attacks)].copy()
# each attack's own threat model (the family of its undefended oracle): a label release moves a
# score-based attack's oracle to "label", but it stays a black-box attack
attacked["base_family"] = attacked["attack"].map(
    {a: FAMILY[ATTACK_ACCESS[a]] for a in attacks})  # fmt: skip
bench.paired(attacked, "defense_label", reference, ["attack"], name="paired_vs_undefended",
             caption=f"Acc@1 under each defense minus under `{reference}`, same seeds [95 % "
             "interval]; `supported`: the interval excludes 0")  # fmt: skip
# DP-SGD swaps BatchNorm for GroupNorm: compare it with its matched baseline (same recipe, no
# noise, no clipping) when the configuration trains one, not only with the BatchNorm target.
dp_base = [label for label, s in specs.items()
           if s["name"] == "dp_sgd" and s.get("kwargs", {}).get("noise_multiplier") == 0]  # fmt: skip
if dp_base:
    bench.paired(attacked[attacked["defense"] == "dp_sgd"], "defense_label", dp_base[0],
                 ["attack"], name="paired_dp_sgd_vs_groupnorm_baseline",
                 caption=f"DP-SGD against its matched GroupNorm baseline `{dp_base[0]}`, same seeds")  # fmt: skip
utility = df.drop_duplicates(["defense_label", "seed"])
bench.table(utility, ["defense_label"], ["natural_acc", *extra], name="natural_accuracy")

# %%
family = attacked.groupby("attack")["family"].agg(lambda f: "/".join(sorted(set(f))))
fig, axes = plt.subplots(1, len(attacks), figsize=(5.2 * len(attacks), 4.5), squeeze=False)
for ax, name in zip(axes[0], attacks):
    plots.plot_privacy_utility(df, attack=name, ax=ax, floors=bench.floors(df))
    ax.set_xlabel("natural accuracy (private test)")
    ax.set_ylabel("attack Acc@1 (evaluator)")
    ax.set_title(f"{name} ({family.get(name, '')})", fontsize=9)
fig.suptitle("Privacy-utility plane: one curve per defense across its knob (lower right is "
             "better); error bars: 95 % intervals")  # fmt: skip
fig.tight_layout()
bench.save(fig, "privacy_utility")
plt.show()

# %%
heat = df.groupby(["defense_label", "attack"])["acc1"].mean().unstack("attack")
fig, ax = plt.subplots(figsize=(1.6 * len(heat.columns) + 3, 0.45 * len(heat) + 1.5))
sns.heatmap(heat, annot=True, fmt=".2f", cmap="rocket_r", vmin=0, vmax=1, ax=ax,
            cbar_kws={"label": "Acc@1"})  # fmt: skip
ax.set_title("Attack Acc@1 (evaluator), mean over seeds")
bench.save(fig, "defense_attack_heatmap")
plt.show()

# %% [markdown]
# ## Output defenses against each threat model
#
# Rounding, top-k, label-only release and noise act only on what the oracle releases. Each panel
# holds one family of attacks as the attacker meets the deployment: white-box attackers hold the
# model (flat by definition), score-based black-box attackers read what is released (a label
# release gives them one-hot scores), label-only attackers only ever read the label.

# %%
outputs = [label for label, s in specs.items() if DEFENSE_KIND[s["name"]] == "output"]
outputs = [reference, *outputs]  # the undefended target first
shown = attacked[attacked["defense_label"].isin(outputs)]
fams = [f for f in ("white-box", "black-box", "label-only") if f in set(shown["base_family"])]
if fams and len(outputs) > 1:
    fig, axes = plt.subplots(1, len(fams), figsize=(5.2 * len(fams), 4.3), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        plots.plot_trend(shown[shown["base_family"] == fam], x="defense_label", y="acc1", ax=ax,
                         floors=bench.floors(df), title=f"{fam} attacks")  # fmt: skip
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
    axes[0, 0].set_ylabel("attack Acc@1 (evaluator)")
    fig.suptitle("Output defenses: Acc@1 per attack family (error bars: 95 % intervals)")
    fig.tight_layout()
    bench.save(fig, "output_defenses_by_family")
    plt.show()

# %% [markdown]
# ## Reconstructions of the same classes under each defense (seed 0)

# %%
for name in attacks:
    rows = bench.grid_rows({label: ({"defense_label": label}, name, seeds[0]) for label in specs})
    fig = plots.plot_reconstruction_grid(rows, bench.split.private_train, bench.classes,
                                         per_class=1, title=f"{name}: reconstructions under each defense")  # fmt: skip
    bench.save(fig, f"reconstructions_{name}")
    plt.show()

# %% [markdown]
# ## TL-DMI: where does the private data's Fisher information sit?
#
# Ho et al. (CVPR 2024) argue that layers frozen after public pre-training carry no private
# information. The per-layer Fisher information of the private data's log-likelihood (trace of
# the empirical Fisher diagonal) is compared between the undefended and the TL-DMI target.

# %%
tl = [label for label, s in specs.items() if s["name"] == "tl_dmi"]
models = {
    "undefended": targets.get(("none", seeds[0])),
    **{t: targets[t, seeds[0]] for t in tl[:1]},
}
if fisher and tl:
    fisher_df = pd.DataFrame([
        {"model": name, "layer": layer, "fisher": value}
        for name, tgt in models.items() if tgt is not None
        for layer, value in layer_fisher_information(
            tgt.model, bench.split.private_train, max_batches=8, trainable_only=True).items()
    ])  # fmt: skip
    fisher_df.to_csv(bench.out / "fisher_information.csv", index=False)
    fig, ax = plt.subplots(figsize=(9, 4))
    sns.barplot(data=fisher_df, x="layer", y="fisher", hue="model", ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("Fisher information (trace, trainable parameters)")
    ax.tick_params(axis="x", rotation=60)
    ax.set_title("Private-data Fisher information per layer (frozen layers carry none)")
    fig.tight_layout()
    bench.save(fig, "fisher_information")
    plt.show()
else:
    print("no tl_dmi defense in this configuration: Fisher analysis skipped")

# %% [markdown]
# ### Browse interactively (JupyterLab)
# Pick a defense, an attack and a seed to see every reconstruction of that run.

# %%
bench.browse(df, ["defense_label"])
bench.close()

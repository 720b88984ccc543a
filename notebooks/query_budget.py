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
# # Query budget: how much does each query-access attack recover per query spent?
#
# **Question.** A deployed model answers a limited number of queries (rate limits, cost). How
# does each black-box and label-only attack's success grow with the number of target queries it
# may spend? Each point is one run against the same target whose oracle holds a budget of
# `budget_per_class` x (label entries) queries: the attack runs its official search and is
# stopped by the oracle's budget, not by a loop count (`stopped_by_budget` in the rows), and is
# scored on the best it had found by then. The dashed line marks each attack's official budget
# per class (from its paper's default loop counts), often far beyond what a CPU run affords.
#
# Queries an attack spends on its target priors before the search (C2FMI's adapter training
# set, LOKT's T-ACGAN labels) are counted apart (`prior_queries`) and not capped here: this
# study varies the search's budget.
#
# **Run:** `mibench run parameters/query_budget/default.yaml`; "Run All" in JupyterLab runs the
# same configuration (the defaults below are `default.yaml`'s).

# %%
import matplotlib.pyplot as plt
import pandas as pd

from mibench_lib import plots
from mibench_lib.studies.engine import Arm, open_study, show
from mibench_lib.studies.jobs import TargetRef

# %% tags=["parameters"]
# Injected by the runner (mibench run): where this configuration writes its outputs.
study = "query_budget"  # study name (folder under outputs/)
config = "interactive"  # parameters-file stem
out_dir = "outputs/query_budget/interactive"  # output folder of this run

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
seeds = [0, 1, 2]  # attack seeds (every seed attacks the target trained with seeds[0])
attacks = ["brep_mi", "rlb_mi", "mirror", "c2fmi"]  # query-access attacks (ATTACKS keys)
baselines = ["random_latent"]  # scored like attacks, no queries: the zero-query floor
attack_kwargs = {
    "brep_mi": {"max_stale_iters": 1000, "max_radius": 30.0, "missing_start": "random"},
    "rlb_mi": {},
    "mirror": {"population": 50, "pool_size": 5000},
    "c2fmi": {"adapter_hidden": 512, "adapter_lr": 0.01},
}  # official loop counts: the oracle's budget ends each run  # fmt: skip
prior_kwargs = {
    "style_generator": {},
    "c2fmi_embedding": {"arch": "mnist_resnet", "epochs": 3},
}  # prior -> keyword arguments of its build (attacks' PublicPrior and TargetPrior)  # fmt: skip
query_budgets = {}  # attack -> maximum number of target queries (this study sets them per run)
inception_weights = ""  # local Inception-v3 weights for FID; empty: evaluator features
progress = True  # progress bars

# This study
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001}  # train_classifier keyword arguments
# queries per label entry; each run's oracle answers this x (number of entries) queries in all
budgets_per_class = [100, 300, 1000]
# official search budget per label entry, from each paper's default loop counts (the figure's marks)
official_budgets = {"brep_mi": 33000, "rlb_mi": 80000, "mirror": 200000, "c2fmi": 32048}

# %%
bench = open_study(globals())
show(pd.DataFrame([bench.split.summary()]).to_markdown(index=False))

# %% [markdown]
# ## Every attack at every budget

# %%
ref = TargetRef(target_arch, target_train, seeds[0])
target = bench.targets({0: ref})[0]
entries = len(bench.setting.labels)
arms = [Arm({"budget_per_class": b}, ref, s, columns={"natural_acc": target.natural_acc},
            budgets={a: b * entries for a in attacks}, baselines=b == budgets_per_class[0])
        for b in budgets_per_class for s in seeds]  # fmt: skip
df = bench.run(arms)
show(bench.describe())

# %% [markdown]
# ## Success against the budget: mean ± std over seeds

# %%
METRICS = ["acc1", "acc5", "target_acc", "delta_eval", "queries", "stopped_by_budget",
           "prior_queries", "wall_time_s"]  # fmt: skip
attacked = df[df["attack"].isin(attacks)]
bench.table(attacked, ["attack", "budget_per_class"], METRICS)
bench.paired(attacked, "budget_per_class", budgets_per_class[0], ["attack"],
             name="paired_vs_smallest_budget",
             caption=f"Acc@1 at each budget minus at {budgets_per_class[0]} queries per entry, same "
             "seeds [95 % interval]; `supported`: the interval excludes 0")  # fmt: skip

# %%
floors = bench.floors(df)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
plots.plot_budget_curves(attacked, y="acc1", official=official_budgets, ax=axes[0], floors=floors)
axes[0].set_ylabel("attack Acc@1 (evaluator)")
plots.plot_budget_curves(attacked, y="delta_eval", official=official_budgets, ax=axes[1])
axes[1].set_ylabel("delta_eval (lower: closer to private images)")
for ax in axes:
    ax.set_xlabel("query budget per label entry (log)")
fig.suptitle("Attack success against the query budget (bands: 95 % intervals over seeds)")
fig.tight_layout()
bench.save(fig, "budget_curves")
plt.show()

# %% [markdown]
# ## Reconstructions at each budget (seed 0)

# %%
for name in attacks:
    rows = bench.grid_rows({f"{b} / entry": ({"budget_per_class": b}, name, seeds[0])
                            for b in budgets_per_class})  # fmt: skip
    fig = plots.plot_reconstruction_grid(rows, bench.split.private_train, bench.classes,
                                         per_class=1, title=f"{name}: reconstructions per budget")  # fmt: skip
    bench.save(fig, f"reconstructions_{name}")
    plt.show()

# %% [markdown]
# ### Browse interactively (JupyterLab)

# %%
bench.browse(df, ["budget_per_class"])
bench.close()

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
# # Attack leaderboard: every attack against the same targets
#
# **Question.** Which model-inversion attack recovers the private classes best when all of them
# attack the same target under the same protocol? MIBench (Qiu et al., arXiv 2410.05159) finds
# PLG-MI the strongest at low resolution, while other attacks give more realistic images. Here
# every attack of the registry runs against the same target, with the same labels, evaluator and
# metrics; the random-latent, blank-image and mean-public-image baselines are scored the same way.
# By default (`shared_target`) the three seeds vary the attacks only: one target, trained with the
# first seed, and one set of target priors; `shared_target: false` trains one target per seed
# (three times the prior training), so that the intervals also cover the target's training.
#
# **Protocol.** An attack is ranked only against attacks of its threat model (white-box,
# black-box, label-only). Attacks that train a prior with the target's answers (KEDMI's and
# PLG-MI's GANs, LOMMA's surrogates) report those queries (`prior_queries`) and seconds
# (`prior_build_s`) apart from the attack's own (`queries`, `wall_time_s`); a prior is trained once
# per target and shared by every attack that needs it. Attacks that return several images per
# label (GMI's restarts, KEDMI's and VMI's draws from the recovered distribution, PLG-MI's seeds)
# are scored over all of them; `acc1_selected` is GMI's best restart per label, picked with the
# target only.
#
# **Run:** `mibench run parameters/leaderboard/default.yaml`; "Run All" in JupyterLab runs the
# same configuration (the defaults below are `default.yaml`'s).

# %%
import matplotlib.pyplot as plt
import pandas as pd

from mibench_lib import plots
from mibench_lib.attacks import SPECS
from mibench_lib.attacks._masked import mask_images
from mibench_lib.studies.engine import Arm, open_study, show
from mibench_lib.studies.harness import private_originals
from mibench_lib.studies.jobs import TargetRef

# %% tags=["parameters"]
# Injected by the runner (mibench run): where this configuration writes its outputs.
study = "leaderboard"  # study name (folder under outputs/)
config = "interactive"  # parameters-file stem
out_dir = "outputs/leaderboard/interactive"  # output folder of this run

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
attacks = ["gmi", "brep_mi", "miface", "deepinversion", "kedmi", "plg_mi", "lomma_gmi",
           "lomma_kedmi", "vmi", "if_gmi", "rlb_mi", "mirror", "c2fmi", "lokt",
           "secretgen"]  # keys of mibench_lib.attacks.ATTACKS  # fmt: skip
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
    "kedmi": {"steps": 2400, "lr": 0.02, "samples": 5},
    "plg_mi": {"steps": 600, "lr": 0.1, "samples": 5, "flip": False},
    "lomma_gmi": {"steps": 2400, "lr": 0.02, "loss_divisor": 60, "restarts": 5, "select": "all"},
    "lomma_kedmi": {"steps": 2400, "lr": 0.02, "samples": 5},
    "vmi": {"iterations": 300, "lr": 0.002, "samples_per_step": 64, "samples": 5},
    "if_gmi": {"steps": [70, 25, 25, 25], "pool": 5000, "samples": 5},
    "rlb_mi": {"episodes": 500},
    "mirror": {"population": 50, "pool_size": 5000, "generations": 20},
    "c2fmi": {"adapter_hidden": 512, "adapter_lr": 0.01, "generations": 20},
    "lokt": {"steps": 300, "samples": 5, "flip": False},
    "secretgen": {},
}  # fmt: skip
prior_kwargs = {
    "kedmi_gan": {"latent_dim": 100, "width": 16, "critic_width": 16, "mbd_kernels": 64,
                  "mbd_kernel_dims": 50, "epochs": 60},
    "plg_cgan": {"top_n": 250, "iterations": 600, "latent_dim": 128, "gen_features": 8,
                 "dis_features": 8, "flip": False},
    "lomma_surrogates": {"epochs": 20},
    "style_generator": {},
    "c2fmi_embedding": {"arch": "mnist_resnet", "epochs": 3},
    "c2fmi_adapter": {},
    "lokt_tacgan": {"warmup_iterations": 100, "iterations": 150, "batch_size": 32, "lr": 0.001,
                    "gen_features": 8, "dis_features": 8, "surrogate_epochs": 3,
                    "surrogate_batch_size": 128, "surrogate_images_per_epoch": 2560,
                    "flip": False},
    "secretgen_inpainter": {"latent_dim": 100, "width": 8, "critic_width": 16, "epochs": 6,
                            "batch_size": 64, "reconstruction_weight": 0.05},
}  # prior -> keyword arguments of its build (attacks' PublicPrior and TargetPrior)  # fmt: skip
query_budgets = {}  # attack -> maximum number of target queries (absent: unlimited)
inception_weights = ""  # local Inception-v3 weights for FID; empty: evaluator features
progress = True  # progress bars

# This study
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001}  # train_classifier keyword arguments
shared_target = True  # every seed attacks the target trained with seeds[0] (False: one per seed)

# %%
bench = open_study(globals())
show(pd.DataFrame([bench.split.summary()]).to_markdown(index=False))

# %% [markdown]
# ## Every attack against every target

# %%
# With a shared target, the seeds vary the attacks (and nothing else): the priors KEDMI, PLG-MI
# and LOMMA train with the target's answers are trained once and reused by every seed.
refs = {s: TargetRef(target_arch, target_train, seeds[0] if shared_target else s) for s in seeds}
targets = bench.targets(refs)
arms = [Arm({"target": target_arch}, ref, s, columns={"natural_acc": targets[s].natural_acc})
        for s, ref in refs.items()]  # fmt: skip
df = bench.run(arms)
show(bench.describe())
# partial-image attacks (SecretGen) hold a masked private image: reported apart, never ranked
partial = [a for a in attacks if SPECS[a].threat_model == "partial"]
full = df[~df["attack"].isin(partial)]

# %% [markdown]
# ## The leaderboard: mean ± std over seeds, ranked within each threat model

# %%
METRICS = ["acc1", "acc5", "acc1_selected", "target_acc", "delta_eval", "delta_face", "fid_eval",
           "fid_inception", "precision", "recall", "density", "coverage", "natural_acc"]  # fmt: skip
COST = ["queries", "wall_time_s", "prior_queries", "prior_build_s", "n_images"]
bench.ranked(full, METRICS)
bench.table(df, ["family", "attack"], COST, name="cost")
bench.paired(full, "attack", "random_latent", ["target"], name="paired_vs_random_latents",
             caption="Acc@1 minus random latents' on the same target and seed [95 % interval]; "
             "`supported`: the interval excludes 0")  # fmt: skip

# %%
attacked = full[~full["attack"].isin(["blank_image", "mean_public"])]
floors = bench.floors(full[full["attack"] != "random_latent"])
fig, axes = plt.subplots(1, 2, figsize=(13, 5))
plots.plot_attack_plane(attacked, x="delta_eval", y="acc1", ax=axes[0], floors=floors)
axes[0].set_xlabel("delta_eval (distance to the nearest private image; lower: closer)")
plots.plot_attack_plane(attacked, x="fid_eval", y="acc1", ax=axes[1], floors=floors)
axes[1].set_xlabel("FID in the evaluator's feature space (lower: more realistic)")
fig.suptitle("Each attack: mean over seeds, error bars: 95 % intervals")
fig.tight_layout()
bench.save(fig, "acc1_vs_distance")
plt.show()

# %% [markdown]
# ## Reconstructions: every attack beside real private samples (seed 0)

# %%
key = {"target": target_arch}
rows = bench.grid_rows({a: (key, a, seeds[0]) for a in baselines + attacks if a not in partial})
fig = plots.plot_reconstruction_grid(rows, bench.split.private_train, bench.classes, per_class=2,
                                     title=f"Every attack against the seed-{seeds[0]} target")  # fmt: skip
bench.save(fig, "reconstructions")
plt.show()

# %% [markdown]
# ## Which classes each attack recovers

# %%
per_class = bench.per_class(full, ["target"])
bench.report(per_class.groupby(["attack", "class"], as_index=False)["acc1"].mean(),
             "per_class", "Evaluator Acc@1 per private class, mean over seeds")  # fmt: skip
ax = plots.plot_per_class(per_class[per_class["attack"].isin(baselines + attacks)])
ax.set_title("Per-class Acc@1 (mean over seeds)")
bench.save(ax.figure, "per_class")
plt.show()

# %% [markdown]
# ## Partial-image recovery: a different threat model
#
# SecretGen's attacker holds one private image per entry with its centre hidden, and fills the
# hole. Its numbers answer another question than the table above (how much of a known image's
# hidden part comes back), so they are reported here alone: PSNR over the hidden pixels against the
# original, whether its black-box start found the right class (`pseudo_label_acc`), and the
# evaluator's Acc@1 on the filled images.

# %%
if partial:
    held = private_originals(bench.setting)
    part = df[df["attack"].isin(partial)]
    bench.table(part, ["attack"], ["psnr_hole", "pseudo_label_acc", "acc1", "acc5", "target_acc",
                                   "queries", "wall_time_s"], name="partial_image")  # fmt: skip
    fills = {a: bench.reconstructions(key, a, seeds[0]) for a in partial}
    rows = {"held (masked)": mask_images(held).images,
            **{a: rec[0] for a, rec in fills.items() if rec is not None}, "hidden original": held}  # fmt: skip
    fig = plots.plot_partial_grid(rows, bench.setting.labels,
                                  title="Partial-image recovery (seed 0): the attacker fills the hole")  # fmt: skip
    bench.save(fig, "partial_image")
    plt.show()
else:
    print("no partial-image attack in this configuration")

# %% [markdown]
# ### Browse interactively (JupyterLab)
# Pick an attack and a seed to see every reconstruction of that run.

# %%
bench.browse(df, ["target"])
bench.close()

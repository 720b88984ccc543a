"""Write the study notebooks (without outputs) from the cell sources below.

The committed ``notebooks/*.ipynb`` are the source of truth for users; this script is how they are
(re)generated for review-friendly diffs: ``python tools/make_notebooks.py && ruff format notebooks``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def md(src: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(src.strip())


def code(src: str, tags: list[str] | None = None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(src.strip())
    if tags:
        cell.metadata["tags"] = tags
    return cell


PREDICTIVE_POWER = [
    md("""
# Model predictive power vs. model-inversion leakage

**Question.** Does a more accurate target leak more about its private classes? MIBench (Qiu et al.,
arXiv 2410.05159) reports that attack success grows with the target's predictive power. Here one
target architecture is checkpointed the first time its test accuracy crosses each threshold, and every
attack is run against every checkpoint, for several seeds (each seed trains its own target and seeds
the attacks).

**Protocol.** The attacker reaches each checkpoint only through a `TargetOracle` at the access level
its threat model grants (GMI and MIFace: white-box; BREP-MI: label-only), which counts queries.
Reconstructions are scored by an *evaluator* of a different architecture trained on **all** classes
of the dataset (for `mnist5k`: all ten digits), so an image that looks like a public digit is a
failure. Next to each attack, *random latents* through the same generator are scored the same way.

**Run:** `mibench run parameters/predictive_power/default.yaml` (headless, papermill) or open this
notebook in JupyterLab and run all cells (the defaults below are the embedded-default configuration).
"""),
    code(
        """
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
cache_dir = ".mibench-cache"  # artifact cache folder
model_seed = 0  # seeds the evaluator, the delta_face extractor and the GAN
target_arch = "mnist_cnn"  # key of mibench_lib.models.MODELS
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001, "eval_every": 2}  # train_classifier kwargs
thresholds = [0.5, 0.8, 0.95, 0.99]  # checkpoint the first time test accuracy reaches each
evaluator_arch = "mnist_eval"  # evaluation model, trained on all classes of the dataset
evaluator_train = {"epochs": 8, "batch_size": 64, "lr": 0.001}
face_arch = "mnist_resnet"  # second, independent feature extractor behind delta_face
face_train = {"epochs": 6, "batch_size": 64, "lr": 0.001}
face_weights = ""  # local weights of face_arch (e.g. a face-recognition net): used as is, not trained
gan = {"latent_dim": 100, "width": 16, "critic_width": 16}  # GMI DCGAN generator / WGAN-GP critic
gan_train = {"epochs": 40, "batch_size": 64, "n_critic": 5, "gp_weight": 10.0}

# Attacks
seeds = [0, 1, 2]  # one target training run and one attack run per seed
attacks = ["gmi", "brep_mi", "miface"]  # keys of mibench_lib.attacks.ATTACKS
attack_kwargs = {"gmi": {"steps": 1500, "restarts": 5, "select": "all"}, "brep_mi": {}, "miface": {}}
query_budgets = {}  # attack -> maximum number of target queries (absent: unlimited)
baseline = True  # also score random latents through the same generator
inception_weights = ""  # local Inception-v3 weights for FID; empty: evaluator features
progress = True  # progress bars
""",
        tags=["parameters"],
    ),
    md("## Set-up: data, evaluator, delta_face extractor and GAN prior (all cached)"),
    code("""
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display
from safetensors.torch import load_file, save_file

from mibench_lib import plots
from mibench_lib.artifacts import (
    cached_classifier,
    cached_gan,
    cached_target_checkpoints,
    load_face_extractor,
)
from mibench_lib.attacks import ATTACK_ACCESS, ATTACK_NEEDS, ATTACKS
from mibench_lib.baselines import random_latent_baseline
from mibench_lib.cache import ArtifactCache
from mibench_lib.data import load_dataset
from mibench_lib.metrics import evaluate_reconstructions
from mibench_lib.oracle import TargetOracle
from mibench_lib.progress import tqdm
from mibench_lib.seeding import resolve_device, seed_everything
from mibench_lib.studies.records import append_rows, completed_keys, mean_std_table, save_figure, save_table

t_start = time.perf_counter()
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "reconstructions").mkdir(exist_ok=True)
dev = resolve_device(device)
cache = ArtifactCache(cache_dir)
unknown = sorted(set(attacks) - set(ATTACKS))
if unknown:
    raise ValueError(f"unknown attacks {unknown}; known: {sorted(ATTACKS)}")
seed_everything(model_seed)
split = load_dataset(dataset, **dataset_kwargs)
attack_classes = list(classes) or list(range(split.num_classes))
labels = torch.tensor(attack_classes, dtype=torch.int64).repeat_interleave(samples_per_class)
display(pd.DataFrame([split.summary()]))
"""),
    code("""
evaluator = cached_classifier(cache, role="evaluator", arch=evaluator_arch, train=split.evaluator_train,
                              test=split.evaluator_test, num_classes=split.evaluator_num_classes,
                              train_cfg=evaluator_train, seed=model_seed, device=dev, progress=progress)
face = load_face_extractor(cache, split, arch=face_arch, train_cfg=face_train, weights=face_weights,
                           seed=model_seed + 1, device=dev, progress=progress)
prior = cached_gan(cache, split.public, latent_dim=gan["latent_dim"], width=gan["width"],
                   critic_width=gan["critic_width"], train_cfg=gan_train, seed=model_seed, device=dev,
                   progress=progress)
display(Markdown(
    f"Evaluator `{evaluator_arch}`: test accuracy **{evaluator.test_acc:.3f}** over "
    f"{split.evaluator_num_classes} classes (cache hit: {evaluator.cache_hit}). "
    f"delta_face extractor `{face.name}`: test accuracy {face.test_acc:.3f}. "
    f"GAN prior: {prior.meta['generator_steps']} generator steps on {len(split.public)} public images "
    f"(cache hit: {prior.cache_hit})."))
"""),
    code("""
with torch.inference_mode():
    samples = prior.generator(torch.randn(64, prior.generator.latent_dim,
                                          generator=torch.Generator().manual_seed(0)).to(dev)).cpu()
ax = plots.plot_image_grid(samples, nrow=16, title="GAN prior: random samples (public data only)")
save_figure(ax.figure, out, "gan_samples")
plt.show()
"""),
    md("""
## Attacks on every checkpoint

One row per attack x checkpoint x seed is appended to `results.csv` as soon as it is computed, and
the reconstructions are saved beside it: an interrupted run resumes where it stopped.
"""),
    code("""
KEY = ["attack", "threshold", "seed"]
done = completed_keys(out, KEY)
names = (["random_latent"] if baseline else []) + list(attacks)
for seed in seeds:
    ckpts = cached_target_checkpoints(cache, split, arch=target_arch, train_cfg=target_train,
                                      thresholds=thresholds, seed=seed, device=dev, progress=progress)
    missing = sorted(set(map(float, thresholds)) - {c.threshold for c in ckpts})
    if missing:
        display(Markdown(f"**Seed {seed}: the target never reached thresholds {missing}.**"))
    for ck in ckpts:
        for name in tqdm(names, desc=f"seed {seed}, target acc {ck.test_acc:.3f}", disable=not progress):
            if (name, ck.threshold, seed) in done:
                continue
            rng = torch.Generator().manual_seed(seed)
            if name == "random_latent":
                res = random_latent_baseline(prior.generator, labels, rng=rng, truncation=1.0)
                access = "none"
            else:
                access = ATTACK_ACCESS[name]
                oracle = TargetOracle(ck.model, access=access, budget=query_budgets.get(name))
                needs = {"generator": prior.generator, "discriminator": prior.discriminator}
                kwargs = {k: needs[k] for k in ATTACK_NEEDS[name]}
                res = ATTACKS[name](oracle, labels, rng=rng, **kwargs, **attack_kwargs.get(name, {}))
            scores = evaluate_reconstructions(
                res.images, res.labels, evaluator=evaluator.model, private_train=split.private_train,
                label_map=split.private_to_evaluator, target=ck.model, face_model=face.model,
                inception_weights=inception_weights or None, device=dev, strict=False)
            unavailable = scores.pop("unavailable", {})
            row = {"attack": name, "threshold": ck.threshold, "seed": seed, "access": access,
                   "target_test_acc": ck.test_acc, "target_step": ck.step, **scores,
                   "queries": res.queries, "wall_time_s": res.wall_time_s, "n_images": len(res.images),
                   "evaluator_acc": evaluator.test_acc, "face_acc": face.test_acc,
                   "unavailable": "; ".join(f"{k}: {v}" for k, v in unavailable.items())}
            if "selected" in res.extras:  # GMI's best-of-restarts selection, scored on its own
                sel = res.extras["selected"]
                sel_scores = evaluate_reconstructions(
                    res.images[sel], res.labels[sel], evaluator=evaluator.model,
                    private_train=split.private_train, label_map=split.private_to_evaluator,
                    target=ck.model, device=dev, strict=False)
                row["acc1_selected"] = sel_scores["acc1"]
            if "found_start" in res.extras:  # BREP-MI: entries the target never labelled at the start
                row["start_found"] = float(res.extras["found_start"].float().mean())
            save_file({"images": res.images.contiguous(), "labels": res.labels.contiguous()},
                      out / "reconstructions" / f"{name}_t{ck.threshold:g}_s{seed}.safetensors")
            append_rows(out, [row])
df = pd.read_csv(out / "results.csv")
df.tail()
"""),
    md("## Results: mean ± std over seeds"),
    code("""
METRICS = ["target_test_acc", "target_acc", "acc1", "acc5", "delta_eval", "delta_face", "fid",
           "precision", "recall", "density", "coverage", "queries", "wall_time_s"]
table = mean_std_table(df, ["attack", "threshold"], [m for m in METRICS if m in df])
save_table(table, out, "results_mean_std")
display(Markdown(table.to_markdown(index=False)))
"""),
    code("""
df["target accuracy"] = df.groupby("threshold")["target_test_acc"].transform("mean").round(3)
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
plots.plot_trend(df, x="target accuracy", y="acc1", ax=axes[0], ylabel="evaluator Acc@1",
                 title="Attack accuracy vs. target accuracy")
plots.plot_trend(df, x="target accuracy", y="delta_eval", ax=axes[1], ylabel="delta_eval (lower = closer)",
                 title="Feature distance to private data")
plots.plot_trend(df, x="target accuracy", y="target_acc", ax=axes[2], ylabel="target's own accuracy",
                 title="Reconstructions that fool the target")
save_figure(fig, out, "trends")
plt.show()
"""),
    code("""
top = df[df["threshold"] == df["threshold"].max()]
long = top.melt(id_vars=["attack", "seed"], value_vars=["target_acc", "acc1", "acc5"],
                var_name="scored by", value_name="accuracy")
long["scored by"] = long["scored by"].map({"target_acc": "target (top-1)", "acc1": "evaluator Acc@1",
                                           "acc5": "evaluator Acc@5"})
fig, ax = plt.subplots(figsize=(7, 4))
import seaborn as sns
sns.barplot(data=long, x="attack", y="accuracy", hue="scored by", errorbar="sd", ax=ax)
ax.set_title("Most accurate checkpoint: fooling the target vs. convincing the evaluator")
save_figure(fig, out, "target_vs_evaluator")
plt.show()
"""),
    md("## Reconstructions beside real private samples"),
    code("""
for thr in sorted(df["threshold"].unique()):
    rows = {}
    for name in names:
        f = out / "reconstructions" / f"{name}_t{thr:g}_s{seeds[0]}.safetensors"
        if f.exists():
            rec = load_file(str(f))
            rows[name] = (rec["images"], rec["labels"])
    acc = df.loc[df["threshold"] == thr, "target_test_acc"].mean()
    fig = plots.plot_reconstruction_grid(rows, split.private_train, attack_classes,
                                         per_class=min(2, max(1, samples_per_class * 5)),
                                         class_names=split.class_names,
                                         title=f"Target test accuracy {acc:.3f} (seed {seeds[0]})")
    save_figure(fig, out, f"reconstructions_t{thr:g}")
    plt.show()
"""),
    code("""
wall = time.perf_counter() - t_start
display(Markdown(f"Notebook wall time: {wall:.1f} s. Rows: {len(df)}. Outputs in `{out}`."))
"""),
    md("""
### Browse interactively (JupyterLab)
Pick an attack, a checkpoint and a seed to see every reconstruction of that run.
"""),
    code("""
import ipywidgets as widgets

from mibench_lib.progress import headless

def show(attack, threshold, seed):
    f = out / "reconstructions" / f"{attack}_t{threshold:g}_s{seed}.safetensors"
    if not f.exists():
        print(f"no reconstructions saved for {attack}, threshold {threshold}, seed {seed}")
        return
    rec = load_file(str(f))
    plots.plot_image_grid(rec["images"], nrow=min(16, len(rec["images"])),
                          title=f"{attack}: labels {rec['labels'].tolist()}")
    plt.show()

if headless():
    print("Headless run: open this notebook in JupyterLab to browse the reconstructions.")
else:
    widgets.interact(show, attack=names, threshold=sorted(df["threshold"].unique().tolist()),
                     seed=list(seeds))
"""),
]


def write(name: str, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    path = ROOT / "notebooks" / f"{name}.ipynb"
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    write("predictive_power", PREDICTIVE_POWER)

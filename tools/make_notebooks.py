"""Write the study notebooks (without outputs) from the cell sources below.

The committed ``notebooks/*.ipynb`` are what users open and what papermill runs; this script is
how they are (re)generated, so that reviews read plain Python:
``python tools/make_notebooks.py && ruff format notebooks``.
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


def parameters(study: str, specific: str) -> nbformat.NotebookNode:
    """The papermill parameters cell: shared keys, then the study's own."""
    return code(
        f'''
# Injected by the runner (mibench run): where this configuration writes its outputs.
study = "{study}"  # study name (folder under outputs/)
config = "interactive"  # parameters-file stem
out_dir = "outputs/{study}/interactive"  # output folder of this run

# Data
dataset = "mnist5k"  # key of mibench_lib.data.DATASETS
dataset_kwargs = {{"resolution": 32}}  # keyword arguments of the loader (real data: root, ...)
classes = []  # private classes to attack; [] = all
samples_per_class = 1  # label entries per class handed to each attack

# Trained artifacts (cached by a hash of their configuration)
device = "auto"  # "auto", "cpu" or "cuda"
workers = 0  # processes running attacks and trainings side by side (0: one per CPU thread, at most 8; 1: this one)
cache_dir = ""  # artifact cache folder; empty: $MIBENCH_CACHE, else .mibench-cache
model_seed = 0  # seeds the evaluator, the delta_face extractor and the GAN
target_arch = "mnist_cnn"  # key of mibench_lib.models.MODELS
evaluator_arch = "mnist_eval"  # evaluation model, trained on all classes of the dataset
evaluator_train = {{"epochs": 8, "batch_size": 64, "lr": 0.001}}
face_arch = "mnist_resnet"  # second, independent feature extractor behind delta_face
face_train = {{"epochs": 6, "batch_size": 64, "lr": 0.001}}
face_weights = ""  # local weights of face_arch (e.g. a face-recognition net): used as is, not trained
gan = {{"latent_dim": 100, "width": 8, "critic_width": 8}}  # GMI DCGAN generator / WGAN-GP critic (CPU-sized)
gan_train = {{"epochs": 100, "batch_size": 64, "n_critic": 5, "gp_weight": 10.0}}

# Attacks
seeds = [0, 1, 2]  # one target training run and one attack run per seed
attacks = ["gmi", "brep_mi", "miface"]  # keys of mibench_lib.attacks.ATTACKS
baselines = ["random_latent", "blank_image", "mean_public"]  # reference points scored like attacks (no queries)
attack_kwargs = {{"gmi": {{"steps": 1500, "restarts": 5, "select": "all"}}, "brep_mi": {{"max_radius": 30.0, "missing_start": "random"}}, "miface": {{}}}}
query_budgets = {{}}  # attack -> maximum number of target queries (absent: unlimited)
inception_weights = ""  # local Inception-v3 weights for FID; empty: evaluator features
progress = True  # progress bars
{specific}
''',
        tags=["parameters"],
    )


SETUP = code("""
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display
from safetensors.torch import load_file

from mibench_lib import plots
from mibench_lib.cache import ArtifactCache
from mibench_lib.progress import headless, tqdm
from mibench_lib.seeding import resolve_device, seed_everything
from mibench_lib.stats import paired_table, summary_table
from mibench_lib.studies.harness import prepare_setting
from mibench_lib.studies.jobs import TargetRef, attack_order, attack_target, build_target, load_target
from mibench_lib.studies.pool import StudyPool, default_workers
from mibench_lib.studies.records import append_rows, completed_keys, save_figure, save_table

t_start = time.perf_counter()
out = Path(out_dir)
dev = resolve_device(device)
cache = ArtifactCache(cache_dir or None)
seed_everything(model_seed)
# Lazy: the evaluator, delta_face extractor and GAN are built (or loaded) by the pool's workers.
setting = prepare_setting(
    cache=cache, dataset=dataset, dataset_kwargs=dataset_kwargs, classes=classes,
    samples_per_class=samples_per_class, model_seed=model_seed, evaluator_arch=evaluator_arch,
    evaluator_train=evaluator_train, face_arch=face_arch, face_train=face_train, face_weights=face_weights,
    gan=gan, gan_train=gan_train, attacks=attacks, attack_kwargs=attack_kwargs, query_budgets=query_budgets,
    inception_weights=inception_weights, device=dev, out_dir=out, progress=progress, eager=False)
split = setting.split
attack_classes = sorted(set(setting.labels.tolist()))
pool = StudyPool(setting, workers=default_workers(dev, workers))
warm = pool.warm_up()  # GAN first: it trains while the other worker trains targets and runs MIFace
display(pd.DataFrame([split.summary()]))
print(f"{pool.workers} worker process(es) on {dev}")
""")

SUMMARY = code("""
pool.wait(warm)
display(Markdown(
    f"Evaluator `{evaluator_arch}`: test accuracy **{setting.evaluator.test_acc:.3f}** over "
    f"{split.evaluator_num_classes} classes (cache hit: {setting.evaluator.cache_hit}). "
    f"delta_face extractor `{setting.face.name}`: test accuracy {setting.face.test_acc:.3f}. "
    f"GAN prior: {setting.prior.meta['generator_steps']} generator steps on {len(split.public)} public "
    f"images."))
""")

GAN_SAMPLES = code("""
with torch.inference_mode():
    z = torch.randn(64, setting.prior.generator.latent_dim, generator=torch.Generator().manual_seed(0))
    samples = setting.prior.generator(z.to(dev)).cpu()
ax = plots.plot_image_grid(samples, nrow=16, title="GAN prior: random samples (public data only)")
save_figure(ax.figure, out, "gan_samples")
plt.show()
""")


def browser(key_doc: str, tag_expr: str, choices: str) -> list[nbformat.NotebookNode]:
    """A JupyterLab-only ipywidgets browser of saved reconstructions."""
    return [
        md(
            f"### Browse interactively (JupyterLab)\nPick {key_doc} to see every reconstruction of that run."
        ),
        code(f'''
import ipywidgets as widgets


def show(**key):
    f = out / "reconstructions" / f"{tag_expr}.safetensors"
    if not f.exists():
        print(f"no reconstructions saved for {{key}}")
        return
    rec = load_file(str(f))
    plots.plot_image_grid(rec["images"], nrow=min(16, len(rec["images"])), title=f"labels {{rec['labels'].tolist()}}")
    plt.show()


if headless():
    print("Headless run: open this notebook in JupyterLab to browse the reconstructions.")
else:
    widgets.interact(show, {choices})
'''),
    ]


FOOTER = code("""
pool.close()
display(Markdown(f"Notebook wall time: {time.perf_counter() - t_start:.1f} s. Rows: {len(df)}. Outputs in `{out}`."))
""")

# --------------------------------------------------------------------------------------------------
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
    parameters(
        "predictive_power",
        """
# This study
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001, "eval_every": 2}  # eval_every: steps between accuracy checks
thresholds = [0.5, 0.8, 0.95, 0.99]  # checkpoint the first time test accuracy reaches each
""",
    ),
    md("## Set-up: data, evaluator, delta_face extractor and GAN prior (all cached)"),
    SETUP,
    md("""
## Attacks on every checkpoint

One row per attack x checkpoint x seed is appended to `results.csv` as soon as it is computed, and
the reconstructions are saved beside it: an interrupted run resumes where it stopped.
"""),
    code("""
from dataclasses import replace

KEY = ["attack", "threshold", "seed"]
done = completed_keys(out, KEY)
names = list(baselines) + list(attacks)
runs = {seed: TargetRef(target_arch, target_train, seed, thresholds=tuple(thresholds)) for seed in seeds}
pool.wait([pool.submit(build_target, ref) for ref in runs.values()])
checkpoints = {seed: load_target(setting, ref) for seed, ref in runs.items()}
for seed, ckpts in checkpoints.items():
    missing = sorted(set(map(float, thresholds)) - {c.threshold for c in ckpts})
    if missing:
        display(Markdown(f"**Seed {seed}: the target never reached thresholds {missing}.**"))
futures = {}
for name in attack_order(names):
    for seed, ckpts in checkpoints.items():
        for ck in ckpts:
            if (name, ck.threshold, seed) not in done:
                job = pool.submit(attack_target, replace(runs[seed], threshold=ck.threshold), name, seed=seed,
                                  tag=f"{name}_t{ck.threshold:g}_s{seed}")
                futures[job] = {"threshold": ck.threshold, "target_test_acc": ck.test_acc, "target_step": ck.step}
for columns, row in pool.results(futures, desc="attacks", progress=progress):
    append_rows(out, [{**columns, **row}])
df = pd.read_csv(out / "results.csv").sort_values(KEY, ignore_index=True)
df.tail()
"""),
    SUMMARY,
    GAN_SAMPLES,
    md("## Results: mean ± std over seeds"),
    code("""
METRICS = ["target_test_acc", "target_acc", "acc1", "acc5", "acc1_selected", "delta_eval", "delta_face", "fid_eval",
           "fid_inception", "precision", "recall", "density", "coverage", "queries", "wall_time_s"]
table = summary_table(df, ["attack", "threshold"], [m for m in METRICS if m in df and df[m].notna().any()])
save_table(table, out, "results_mean_std")
display(Markdown("Mean ± std over seeds [95 % interval: accuracies two-stage bootstrap over seeds and "
                 "entries, other metrics t over seeds]\\n\\n" + table.to_markdown(index=False)))
paired = paired_table(df, "acc1", condition_col="attack", reference="random_latent", group_cols=["threshold"])
save_table(paired, out, "paired_vs_random_latents")
display(Markdown("Acc@1 minus random latents' on the same target and seed [95 % interval]; `supported`: "
                 "the interval excludes 0\\n\\n" + paired.to_markdown(index=False)))
"""),
    code("""
df["target accuracy"] = df.groupby("threshold")["target_test_acc"].transform("mean").round(3)
curves = df[~df["attack"].isin(["blank_image", "mean_public"])]
floors = {n.replace("_", " "): df.loc[df["attack"] == n, "acc1"].mean() for n in ["blank_image", "mean_public"]
          if n in baselines}
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
plots.plot_trend(curves, x="target accuracy", y="acc1", ax=axes[0], ylabel="evaluator Acc@1",
                 title="Attack accuracy vs. target accuracy", floors=floors)
plots.plot_trend(curves, x="target accuracy", y="delta_eval", ax=axes[1], ylabel="delta_eval (lower = closer)",
                 title="Feature distance to private data")
plots.plot_trend(curves, x="target accuracy", y="target_acc", ax=axes[2], ylabel="target's own accuracy",
                 title="Reconstructions that fool the target")
fig.suptitle("Mean over seeds, error bars: 95 % intervals")
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
sns.barplot(data=long, x="attack", y="accuracy", hue="scored by", errorbar=("ci", 95), ax=ax)
ax.set_ylim(0, 1.02)
ax.tick_params(axis="x", rotation=30)
ax.set_title("Most accurate checkpoint: fooling the target vs. convincing the evaluator (95 % CI over seeds)")
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
    fig = plots.plot_reconstruction_grid(rows, split.private_train, attack_classes, per_class=2,
                                         class_names=split.class_names,
                                         title=f"Target test accuracy {acc:.3f} (seed {seeds[0]})")
    save_figure(fig, out, f"reconstructions_t{thr:g}")
    plt.show()
"""),
    FOOTER,
    *browser(
        "an attack, a checkpoint and a seed",
        '{key["attack"]}_t{key["threshold"]:g}_s{key["seed"]}',
        'attack=names, threshold=sorted(df["threshold"].unique().tolist()), seed=list(seeds)',
    ),
]

# --------------------------------------------------------------------------------------------------
DEFENSES = [
    md("""
# Defenses: how much does each one lower what an attacker recovers, and at what cost?

Every defense is trained (or, for output processing, applied at the oracle) with the same target
architecture and recipe; for each defense and knob value, every attack runs against it for several
seeds. Natural accuracy on the private test set is the utility; evaluator Acc@1, Acc@5, delta_eval
and the target's own accuracy on the reconstructions measure leakage.

Threat models matter here: output-processing defenses (rounding, top-k, label-only, noise) change
only what a black-box oracle releases, so **white-box attacks (GMI, MIFace) bypass them by
definition** and BREP-MI, which already uses labels only, is unaffected by all but the noise. The
tables keep the white-box, black-box and label-only families apart for this reason. Such an attack
against such a deployment observes exactly what it observes against the undefended target (the
oracle hands a white-box attacker the model itself), so the same seeded run is computed once and
reported under both defenses, marked in the column `same_run_as`; `reuse_identical_runs = False`
recomputes it (with the same numbers).

DP-SGD's epsilon is example-level: it bounds what one training image reveals. Model inversion
recovers what a whole class shares, which no per-example guarantee covers (a class of k images is
protected only at roughly k x epsilon).

**Run:** `mibench run parameters/defenses/default.yaml`.
"""),
    parameters(
        "defenses",
        """
# This study
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001}  # train_classifier keyword arguments
defenses = [{"name": "none"}, {"name": "mid", "kwargs": {"beta": 0.01}}]  # [{name, kwargs, attacks (optional subset)}] from mibench_lib.defenses.DEFENSES
fisher = True  # per-layer Fisher information of the undefended and TL-DMI targets (needs a tl_dmi entry)
reuse_identical_runs = True  # run an attack once when two defenses release exactly the same thing to it
""",
    ),
    md("## Set-up (cached)"),
    SETUP,
    md("## Every defense x seed x attack"),
    code("""
import shutil

from mibench_lib.defenses import DEFENSE_KIND
from mibench_lib.studies.jobs import observation_key


def label_of(spec):
    kw = spec.get("kwargs", {})
    return spec["name"] + ("" if not kw else " (" + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")")


def tag_of(label, name, seed):
    return f"{label}_{name}_s{seed}".replace(" ", "").replace("(", "_").replace(")", "").replace(",", "_")


KEY = ["defense_label", "attack", "seed"]
done = completed_keys(out, KEY)
refs = {(label_of(spec), seed): TargetRef(target_arch, target_train, seed, defense_name=spec["name"],
                                           defense_kwargs=spec.get("kwargs", {}))
        for spec in defenses for seed in seeds}
specs = {label_of(spec): spec for spec in defenses}
pool.wait([pool.submit(build_target, ref) for ref in refs.values()])
targets = {key: load_target(setting, ref) for key, ref in refs.items()}
futures, first_run, same_run = {}, {}, {}
reference_label = label_of(defenses[0])  # the trivial floors are scored once per seed, on this target
for name in attack_order(list(baselines) + list(attacks)):
    for (label, seed), ref in refs.items():
        if name in baselines and label != reference_label:
            continue
        if name in attacks and name not in specs[label].get("attacks", attacks):  # e.g. sweep points: GMI only
            continue
        tgt, spec = targets[(label, seed)], specs[label]
        columns = {"defense_label": label, "defense": spec["name"], "defense_kind": DEFENSE_KIND[spec["name"]],
                   "knob": tgt.defense.knob or "", "knob_value": tgt.defense.knob_value,
                   "natural_acc": tgt.natural_acc, **{f"defense_{k}": v for k, v in tgt.extra.items()}}
        observed = observation_key(ref, tgt, name, seed=seed) if reuse_identical_runs else (label, name, seed)
        if observed in first_run:  # e.g. GMI under rounding: it holds the undefended model itself
            same_run[(label, name, seed)] = (first_run[observed], columns)
            continue
        first_run[observed] = label
        if (label, name, seed) not in done:
            job = pool.submit(attack_target, ref, name, seed=seed, tag=tag_of(label, name, seed), through_defense=True)
            futures[job] = columns
for columns, row in pool.results(futures, desc="attacks", progress=progress):
    append_rows(out, [{**columns, **row}])
df = pd.read_csv(out / "results.csv")
# A run that observes exactly what an earlier one did is that run: report it under this defense too.
copies = []
for (label, name, seed), (origin, columns) in same_run.items():
    if (label, name, seed) in done:
        continue
    src = df[(df["defense_label"] == origin) & (df["attack"] == name) & (df["seed"] == seed)].iloc[0]
    copies.append({**src.dropna().to_dict(), **columns, "same_run_as": origin})
    recon = out / "reconstructions"
    shutil.copyfile(recon / f"{tag_of(origin, name, seed)}.safetensors", recon / f"{tag_of(label, name, seed)}.safetensors")
append_rows(out, copies)
df = pd.read_csv(out / "results.csv").sort_values(KEY, ignore_index=True)
display(Markdown(f"{len(futures)} attack runs computed, {len(copies)} reported under a second defense "
                 "whose oracle released exactly the same thing (column `same_run_as`)."))
df.tail()
"""),
    SUMMARY,
    md("## Results: mean ± std over seeds"),
    code("""
METRICS = ["natural_acc", "target_acc", "acc1", "acc5", "delta_eval", "delta_face", "fid_eval", "fid_inception",
           "queries"]
extra_cols = [c for c in df if c.startswith("defense_") and c not in ("defense_label", "defense_kind")
              and pd.api.types.is_numeric_dtype(df[c])]
table = summary_table(df, ["family", "attack", "defense_label"],
                      [m for m in METRICS + extra_cols if m in df and df[m].notna().any()])
save_table(table, out, "results_mean_std")
display(Markdown("Mean ± std over seeds [95 % interval: accuracies two-stage bootstrap over seeds and "
                 "entries, other metrics t over seeds]\\n\\n" + table.to_markdown(index=False)))
paired = paired_table(df[df["attack"].isin(attacks)], "acc1", condition_col="defense_label",
                      reference=reference_label, group_cols=["attack"])
save_table(paired, out, "paired_vs_undefended")
display(Markdown(f"Acc@1 under each defense minus under `{reference_label}`, same seeds [95 % interval]; "
                 "`supported`: the interval excludes 0\\n\\n" + paired.to_markdown(index=False)))
# DP-SGD swaps BatchNorm for GroupNorm: compare it with its matched baseline (same recipe, no noise,
# no clipping) when the configuration trains one, not only with the BatchNorm target.
dp_base = [label_of(s) for s in defenses if s["name"] == "dp_sgd" and s.get("kwargs", {}).get("noise_multiplier") == 0]
if dp_base:
    dp_rows = df[(df["defense"] == "dp_sgd") & df["attack"].isin(attacks)]
    paired_dp = paired_table(dp_rows, "acc1", condition_col="defense_label", reference=dp_base[0],
                             group_cols=["attack"])
    save_table(paired_dp, out, "paired_dp_sgd_vs_groupnorm_baseline")
    display(Markdown(f"DP-SGD against its matched GroupNorm baseline `{dp_base[0]}`, same seeds\\n\\n"
                     + paired_dp.to_markdown(index=False)))
utility = summary_table(df.drop_duplicates(["defense_label", "seed"]), ["defense_label"],
                        ["natural_acc", *extra_cols], digits=3)
save_table(utility, out, "natural_accuracy")
display(Markdown(utility.to_markdown(index=False)))
"""),
    code("""
floors = {n.replace("_", " "): df.loc[df["attack"] == n, "acc1"].mean() for n in baselines}
fig, axes = plt.subplots(1, len(attacks), figsize=(5.2 * len(attacks), 4.5), squeeze=False)
for ax, name in zip(axes[0], attacks):
    plots.plot_privacy_utility(df, attack=name, ax=ax, floors=floors)
    ax.set_xlabel("natural accuracy (private test)")
    ax.set_ylabel("attack Acc@1 (evaluator)")
fig.suptitle("Privacy-utility plane: one curve per defense across its knob (lower right is better); "
             "error bars: 95 % intervals")
fig.tight_layout()
save_figure(fig, out, "privacy_utility")
plt.show()
"""),
    code("""
heat = df.groupby(["defense_label", "attack"])["acc1"].mean().unstack("attack")
fig, ax = plt.subplots(figsize=(1.6 * len(heat.columns) + 3, 0.45 * len(heat) + 1.5))
sns.heatmap(heat, annot=True, fmt=".2f", cmap="rocket_r", vmin=0, vmax=1, ax=ax, cbar_kws={"label": "Acc@1"})
ax.set_title("Attack Acc@1 (evaluator), mean over seeds")
save_figure(fig, out, "defense_attack_heatmap")
plt.show()
"""),
    md("## Reconstructions of the same classes under each defense (seed 0)"),
    code("""
for name in attacks:
    rows = {}
    for spec in defenses:
        label = label_of(spec)
        f = out / "reconstructions" / f"{tag_of(label, name, seeds[0])}.safetensors"
        if f.exists():
            rec = load_file(str(f))
            rows[label] = (rec["images"], rec["labels"])
    fig = plots.plot_reconstruction_grid(rows, split.private_train, attack_classes, per_class=1,
                                         title=f"{name}: reconstructions under each defense")
    save_figure(fig, out, f"reconstructions_{name}")
    plt.show()
"""),
    md("""
## TL-DMI: where does the private data's Fisher information sit?

Ho et al. (CVPR 2024) argue that layers frozen after public pre-training carry no private
information. The per-layer Fisher information of the private data's log-likelihood (trace of the
empirical Fisher diagonal) is compared between the undefended and the TL-DMI target.
"""),
    code("""
from mibench_lib.defenses import layer_fisher_information

tl = [s for s in defenses if s["name"] == "tl_dmi"]
if fisher and tl:
    base = targets[(label_of({"name": "none"}), seeds[0])] if any(s["name"] == "none" for s in defenses) else None
    rows = []
    for lab, tgt in [("undefended", base), (label_of(tl[0]), targets[(label_of(tl[0]), seeds[0])])]:
        if tgt is None:
            continue
        info = layer_fisher_information(tgt.model, split.private_train, max_batches=8, trainable_only=True)
        rows += [{"model": lab, "layer": k, "fisher": v} for k, v in info.items()]
    fisher_df = pd.DataFrame(rows)
    fisher_df.to_csv(out / "fisher_information.csv", index=False)
    fig, ax = plt.subplots(figsize=(9, 4))
    sns.barplot(data=fisher_df, x="layer", y="fisher", hue="model", ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("Fisher information (trace, trainable parameters)")
    ax.tick_params(axis="x", rotation=60)
    ax.set_title("Private-data Fisher information per layer (frozen layers carry none)")
    fig.tight_layout()
    save_figure(fig, out, "fisher_information")
    plt.show()
else:
    print("no tl_dmi defense in this configuration: Fisher analysis skipped")
"""),
    FOOTER,
    *browser(
        "a defense, an attack and a seed",
        '{key["tag"]}_s{key["seed"]}',
        'tag=[f"{label_of(s)}_{a}".replace(" ", "").replace("(", "_").replace(")", "").replace(",", "_") '
        "for s in defenses for a in attacks], seed=list(seeds)",
    ),
]

# --------------------------------------------------------------------------------------------------
ADVERSARIAL = [
    md("""
# Adversarial robustness vs. model inversion

**Question.** Targets trained adversarially (Madry et al., ICLR 2018: PGD in L-inf and L2) are
reported to have perceptually aligned gradients. Does that make inversion easier, in particular for
prior-free attacks such as MIFace that follow the target's input gradient directly? Each target is
adversarially trained at each epsilon of the grid (epsilon 0 = the standard recipe), its clean and
PGD robust accuracy are reported, and every attack runs against it.

**Run:** `mibench run parameters/adversarial_robustness/default.yaml`.
"""),
    parameters(
        "adversarial_robustness",
        """
# This study
target_train = {"epochs": 4, "batch_size": 64, "lr": 0.001}  # train_classifier keyword arguments
eps_grid = {"linf": [0.1, 0.3], "l2": [1.0, 2.0]}  # adversarial-training radii per norm (0 = standard training is added)
at_kwargs = {"steps": 5, "eval_steps": 20}  # further keyword arguments of adversarial_training_defense
""",
    ),
    md("## Set-up (cached)"),
    SETUP,
    md("## Every (norm, epsilon) x seed x attack"),
    code("""
from mibench_lib.studies.jobs import target_robust_accuracy

grid = [("none", 0.0)] + [(norm, float(e)) for norm, eps in eps_grid.items() for e in eps]
KEY = ["norm", "eps", "attack", "seed"]
done = completed_keys(out, KEY)


def ref_of(norm, eps, seed):
    if norm == "none":
        return TargetRef(target_arch, target_train, seed)
    return TargetRef(target_arch, target_train, seed, defense_name="adversarial_training",
                     defense_kwargs={"eps": eps, "norm": norm, **at_kwargs})


refs = {(norm, eps, seed): ref_of(norm, eps, seed) for norm, eps in grid for seed in seeds}
pool.wait([pool.submit(build_target, ref) for ref in refs.values()])
targets = {key: load_target(setting, ref) for key, ref in refs.items()}
# The standard target's PGD robust accuracy at each training radius, next to the robust model's.
undefended = {(norm, eps, seed): pool.submit(target_robust_accuracy, refs[("none", 0.0, seed)], eps=eps, norm=norm,
                                             steps=at_kwargs.get("eval_steps", 20), seed=seed)
              for (norm, eps, seed) in refs if norm != "none"}
futures = {}
for name in attack_order(list(baselines) + list(attacks)):
    for (norm, eps, seed), ref in refs.items():
        if name in baselines and norm != "none":  # the trivial floors: once per seed, standard target
            continue
        if (norm, eps, name, seed) not in done:
            job = pool.submit(attack_target, ref, name, seed=seed, tag=f"{norm}_{eps:g}_{name}_s{seed}")
            futures[job] = (norm, eps, seed)
for (norm, eps, seed), row in pool.results(futures, desc="attacks", progress=progress):
    tgt = targets[(norm, eps, seed)]
    robust = undefended.get((norm, eps, seed))
    append_rows(out, [{"norm": norm, "eps": eps, "natural_acc": tgt.natural_acc,
                       "robust_acc": tgt.extra.get("robust_acc", float("nan")),
                       "undefended_robust_acc": robust.result() if robust else float("nan"), **row}])
df = pd.read_csv(out / "results.csv").sort_values(KEY, ignore_index=True)
df.tail()
"""),
    SUMMARY,
    md("## Results: mean ± std over seeds"),
    code("""
METRICS = ["natural_acc", "robust_acc", "target_acc", "acc1", "acc5", "delta_eval", "delta_face", "fid_eval",
           "fid_inception"]
table = summary_table(df, ["attack", "norm", "eps"], [m for m in METRICS if m in df and df[m].notna().any()])
save_table(table, out, "results_mean_std")
display(Markdown("Mean ± std over seeds [95 % interval: accuracies two-stage bootstrap over seeds and "
                 "entries, other metrics t over seeds]\\n\\n" + table.to_markdown(index=False)))
df["target"] = [f"{n} {e:g}" for n, e in zip(df["norm"], df["eps"])]
paired = paired_table(df[df["attack"].isin(attacks)], "acc1", condition_col="target", reference="none 0",
                      group_cols=["attack"])
save_table(paired, out, "paired_vs_standard")
display(Markdown("Acc@1 against each robust target minus against the standard one, same seeds [95 % interval]; "
                 "`supported`: the interval excludes 0\\n\\n" + paired.to_markdown(index=False)))
"""),
    code("""
floors = {n.replace("_", " "): df.loc[df["attack"] == n, "acc1"].mean() for n in baselines}
attack_rows = df[df["attack"].isin(attacks)]
plot_df = pd.concat([attack_rows[attack_rows["norm"] == "none"].assign(norm=n) for n in eps_grid]
                    + [attack_rows[attack_rows["norm"] != "none"]])
fig, axes = plt.subplots(2, len(eps_grid), figsize=(5.5 * len(eps_grid), 8), squeeze=False)
for j, norm in enumerate(eps_grid):
    sub = plot_df[plot_df["norm"] == norm]
    plots.plot_trend(sub, x="eps", y="acc1", ax=axes[0][j], ylabel="evaluator Acc@1",
                     title=f"{norm}: attack accuracy vs. training epsilon", floors=floors)
    plots.plot_trend(sub, x="eps", y="delta_eval", ax=axes[1][j], ylabel="delta_eval (lower = closer)",
                     title=f"{norm}: feature distance vs. training epsilon")
fig.tight_layout()
save_figure(fig, out, "attack_vs_epsilon")
plt.show()
acc = (df.drop_duplicates(["norm", "eps", "seed"]).groupby(["norm", "eps"])
       [["natural_acc", "robust_acc", "undefended_robust_acc"]].mean())
save_table(acc.reset_index(), out, "clean_and_robust_accuracy")
display(Markdown(acc.reset_index().to_markdown(index=False)))
"""),
    md("## Reconstructions across epsilon (seed 0)"),
    code("""
for name in attacks:
    rows = {}
    for norm, eps in grid:
        f = out / "reconstructions" / f"{norm}_{eps:g}_{name}_s{seeds[0]}.safetensors"
        if f.exists():
            rec = load_file(str(f))
            rows[f"{norm} eps={eps:g}"] = (rec["images"], rec["labels"])
    fig = plots.plot_reconstruction_grid(rows, split.private_train, attack_classes, per_class=1,
                                         title=f"{name} against adversarially trained targets")
    save_figure(fig, out, f"reconstructions_{name}")
    plt.show()
"""),
    FOOTER,
    *browser(
        "a norm, an epsilon, an attack and a seed",
        '{key["norm"]}_{key["eps"]:g}_{key["attack"]}_s{key["seed"]}',
        "norm=[g[0] for g in grid], eps=sorted({g[1] for g in grid}), attack=list(attacks), seed=list(seeds)",
    ),
]


def write(name: str, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    for i, cell in enumerate(cells):
        cell["id"] = f"{name[:12]}-{i:02d}"  # stable ids: regenerating gives clean diffs
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
    write("defenses", DEFENSES)
    write("adversarial_robustness", ADVERSARIAL)

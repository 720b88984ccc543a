"""The study engine: a notebook says what it varies and what it plots; this runs everything else.

A study notebook is a parameters cell, then library calls and figures::

    study = open_study(globals())                      # setting(s), artifact cache, worker pool
    targets = study.targets({seed: TargetRef(...) for seed in study.seeds})
    arms = [Arm({"threshold": t}, ref, seed, columns={...}) for ...]
    df = study.run(arms)                               # every (arm x attack) job, resumable
    study.table(df, ["attack", "threshold"], METRICS)  # mean ± std [95 % interval], saved

:func:`open_study` builds the study's :class:`~mibench_lib.studies.harness.StudySetting` (or one per
*variant*: e.g. one per target resolution, each with its own data, evaluator and GAN prior) from
the notebook's parameters, opens the :class:`~mibench_lib.studies.pool.StudyPool` and queues the
builds of the evaluator, extractor and GAN prior. :meth:`Study.run` owns the run loop: one job per
arm (a target the attacks run against, with the columns that identify it) and attack, in an order
that keeps the workers busy; rows already in ``results.csv`` are skipped (resume by key); a run
that observes exactly what an earlier one observed (a white-box attack against an output defense
holds the undefended model) is computed once and reported under both (``same_run_as``); rows are
appended as jobs finish, and reconstructions saved under a tag derived from the key
(:func:`~mibench_lib.studies.jobs.run_tag`).
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file
from torch import Tensor

from mibench_lib.attacks import SPECS
from mibench_lib.cache import ArtifactCache
from mibench_lib.metrics.features import predict_logits
from mibench_lib.seeding import resolve_device, seed_everything
from mibench_lib.stats import paired_table, summary_table
from mibench_lib.studies.harness import StudySetting, prepare_setting
from mibench_lib.studies.jobs import (
    TargetRef,
    attack_order,
    attack_target,
    build_target,
    key_label,
    load_target,
    observation_key,
    run_tag,
    train_public_prior,
    train_target_prior,
)
from mibench_lib.studies.pool import StudyPool, default_workers
from mibench_lib.studies.records import append_rows, completed_keys, save_figure, save_table

__all__ = ["INTERVAL_NOTE", "Arm", "Study", "open_study", "show"]

#: What the interval in every summary table is.
INTERVAL_NOTE = (
    "Mean ± std over seeds [95 % interval: accuracies two-stage bootstrap over seeds and "
    "entries, other metrics t over seeds]"
)


def show(markdown: str) -> None:
    """Display Markdown in a notebook (plain text elsewhere)."""
    try:
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython ships with the notebook dependencies
        print(markdown)
        return
    display(Markdown(markdown))


@dataclass(frozen=True)
class Arm:
    """One target the study's attacks run against, for one seed, and how its rows look.

    Attributes:
        key: Columns that identify the target in every row (besides ``attack`` and ``seed``),
            e.g. ``{"threshold": 0.5}`` or ``{"defense_label": "mid (beta=0.01)"}``. Every arm of
            one :meth:`Study.run` has the same key columns.
        ref: The target's recipe.
        seed: Seeds the target's training run and the attacks against it.
        columns: Further columns of its rows (target accuracy, the defense's knob, ...).
        attacks: The attacks run against it (None: every attack of the study).
        baselines: Whether the trivial reference points are scored against it too.
        through_defense: Query it through the oracle its defense deploys (output processing).
        variant: The study setting it belongs to (see :func:`open_study`).
        budgets: Query budget per attack for this arm (absent: the study's ``query_budgets``);
            a query-access search stops when the oracle's budget cannot pay for its next step.
    """

    key: Mapping[str, Any]
    ref: TargetRef
    seed: int
    columns: Mapping[str, Any] = field(default_factory=dict)
    attacks: Sequence[str] | None = None
    baselines: bool = True
    through_defense: bool = False
    variant: str = ""
    budgets: Mapping[str, int] = field(default_factory=dict)

    def row_key(self, attack: str) -> tuple[Any, ...]:
        """The key of its row for ``attack``: key values, attack, seed (``results.csv`` order)."""
        return (*self.key.values(), attack, self.seed)


def _setting_recipe(params: Mapping[str, Any], cache: ArtifactCache, device: torch.device) -> dict:
    """The keyword arguments of :func:`prepare_setting` taken from a notebook's parameters."""
    names = [
        n for n in inspect.signature(prepare_setting).parameters if n not in ("cache", "eager")
    ]
    recipe = {n: params[n] for n in names if n in params}
    missing = sorted(set(names) - set(recipe) - {"device", "progress", "prior_kwargs"})
    if missing:
        raise ValueError(f"open_study: the parameters lack {missing}")
    return {**recipe, "cache": cache, "device": device, "out_dir": params["out_dir"]}


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` (one level deep for mapping values, e.g. ``dataset_kwargs``)."""
    out = dict(base)
    for key, value in overrides.items():
        old = out.get(key)
        out[key] = (
            {**old, **value} if isinstance(old, Mapping) and isinstance(value, Mapping) else value
        )
    return out


class Study:
    """One configuration's setting(s), pool and outputs; see the module docstring.

    Attributes:
        out: The output folder.
        settings: Variant name -> :class:`StudySetting` (``""`` when there are no variants).
        setting, split: The first variant's setting and data split.
        pool: The worker pool (closed by :meth:`close`).
        attacks, baselines, seeds: From the parameters.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        variants: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.t_start = time.perf_counter()
        self.params = dict(params)
        self.out = Path(params["out_dir"])
        self.device = resolve_device(params["device"])
        self.cache = ArtifactCache(params["cache_dir"] or None)
        self.progress = bool(params["progress"])
        self.attacks: list[str] = list(params["attacks"])
        self.baselines: list[str] = list(params["baselines"])
        self.seeds: list[int] = list(params["seeds"])
        seed_everything(params["model_seed"])
        base = _setting_recipe(params, self.cache, self.device)
        # Lazy: the evaluator, extractor and GAN are built (or loaded) by the pool's workers.
        self.settings: dict[str, StudySetting] = {
            str(name): prepare_setting(**_merge(base, overrides), eager=False)
            for name, overrides in (variants or {"": {}}).items()
        }
        self.setting = next(iter(self.settings.values()))
        self.split = self.setting.split
        self.classes = sorted(set(self.setting.labels.tolist()))
        self.pool = StudyPool(
            self.settings, workers=default_workers(self.device, params.get("workers", 0))
        )
        self.warm = self.pool.warm_up()  # GANs first: they train while the rest runs
        self._tags: dict[tuple[Any, ...], str] = {}

    # -- targets and other jobs ---------------------------------------------------------------
    def targets(
        self, refs: Mapping[Any, TargetRef], *, variant: str | Mapping[Any, str] = ""
    ) -> dict[Any, Any]:
        """Build every target of ``refs`` in the pool (in parallel), then load them here.

        Args:
            refs: Any keys mapped to target recipes.
            variant: The setting they belong to, or a mapping from each key to its setting.

        Returns:
            The same keys mapped to :func:`~mibench_lib.studies.jobs.load_target`'s result.
        """
        where = {k: variant if isinstance(variant, str) else variant[k] for k in refs}
        self.pool.wait([self.pool.submit_in(where[k], build_target, r) for k, r in refs.items()])
        return {k: load_target(self.settings[where[k]], r) for k, r in refs.items()}

    def map(
        self,
        fn: Callable[..., Any],
        calls: Mapping[Any, Mapping[str, Any]],
        *,
        variant: str = "",
    ) -> dict[Any, Any]:
        """Run the module-level job ``fn(setting, **kwargs)`` for each entry of ``calls``."""
        futures = {key: self.pool.submit_in(variant, fn, **kw) for key, kw in calls.items()}
        results = self.pool.wait(futures.values())
        return dict(zip(futures, results, strict=True))

    # -- the run loop ----------------------------------------------------------------------------
    def run(
        self, arms: Iterable[Arm], *, reuse: bool = True, desc: str = "attacks"
    ) -> pd.DataFrame:
        """Run every attack and baseline against every arm; return all rows, sorted by key.

        Rows already in ``results.csv`` (same key) are not computed again. With ``reuse``, an
        attack whose oracle would release exactly what it released to an earlier arm
        (:func:`~mibench_lib.studies.jobs.observation_key`; only for ``through_defense`` arms)
        is computed once and its row copied under the later arm with ``same_run_as`` naming the
        first arm.

        Raises:
            ValueError: The arms disagree on their key columns, or two arms share a key and seed.
            StudyJobError: A job failed (the rows finished before it are kept).
        """
        arms = list(arms)
        if not arms:
            raise ValueError("Study.run needs at least one arm")
        key_cols = [*arms[0].key, "attack", "seed"]
        seen: set[tuple[Any, ...]] = set()
        for arm in arms:
            if list(arm.key) != key_cols[:-2]:
                raise ValueError(f"arm {dict(arm.key)}: key columns differ from {key_cols[:-2]}")
            if arm.row_key("") in seen:
                raise ValueError(f"two arms share the key {dict(arm.key)} and seed {arm.seed}")
            seen.add(arm.row_key(""))
        done = completed_keys(self.out, key_cols)
        self.out.mkdir(parents=True, exist_ok=True)  # what identifies a row, for `mibench compare`
        (self.out / "results_key.json").write_text(json.dumps({"key": key_cols}) + "\n")
        futures: dict[Any, dict[str, Any]] = {}
        first: dict[Any, Arm] = {}
        same: list[tuple[Arm, str, Arm]] = []
        priors: dict[str, Any] = {}  # (variant, target, prior) -> its training job
        todo: list[tuple[Arm, str, tuple[Any, ...]]] = []
        for name in attack_order([*self.baselines, *self.attacks]):
            for arm in arms:
                if name in self.baselines and not arm.baselines:
                    continue
                if name not in self.baselines and name not in (
                    self.attacks if arm.attacks is None else arm.attacks
                ):
                    continue
                row_key = arm.row_key(name)
                self._tags[row_key] = run_tag(arm.key, name, arm.seed)
                observed = self._observation(arm, name) if reuse else row_key
                if observed in first:  # e.g. GMI under rounding: it holds the undefended model
                    same.append((arm, name, first[observed]))
                    continue
                first[observed] = arm
                if row_key not in done:
                    todo.append((arm, name, row_key))
        # Priors first, each trained once (side by side), ahead of the runs that need them: public
        # ones once per setting, target ones per target (and per output defense for query access).
        for arm, name, _ in todo:
            spec = SPECS.get(name)
            if spec is None:
                continue
            for public_prior in spec.public_priors:
                where = repr((arm.variant, public_prior.name))
                if where not in priors:
                    priors[where] = self.pool.submit_in(
                        arm.variant, train_public_prior, public_prior.name
                    )
            through = arm.through_defense and spec.access != "white-box"
            for prior in spec.target_priors:
                where = repr((arm.variant, arm.ref, prior.name, through))
                if where not in priors:
                    priors[where] = self.pool.submit_in(
                        arm.variant,
                        train_target_prior,
                        arm.ref,
                        prior.name,
                        through_defense=through,
                    )
        for arm, name, row_key in todo:
            job = self.pool.submit_in(
                arm.variant,
                attack_target,
                arm.ref,
                name,
                seed=arm.seed,
                tag=self._tags[row_key],
                through_defense=arm.through_defense,
                budget=arm.budgets.get(name),
            )
            futures[job] = {**arm.key, **arm.columns}
        for columns, row in self.pool.results(futures, desc=desc, progress=self.progress):
            append_rows(self.out, [{**columns, **row}])
        self.pool.wait(priors.values())  # done by now; raises if one failed
        copied = self._copy_same_runs(same, key_cols, done)
        df = pd.read_csv(self.out / "results.csv").sort_values(key_cols, ignore_index=True)
        if copied:
            show(
                f"{len(futures)} attack runs computed, {copied} reported under a second arm whose "
                "oracle released exactly the same thing (column `same_run_as`)."
            )
        return df

    def _observation(self, arm: Arm, attack: str) -> Any:
        if not arm.through_defense:
            return arm.row_key(attack)
        target = load_target(self.settings[arm.variant], arm.ref)
        return (arm.variant, observation_key(arm.ref, target, attack, seed=arm.seed))

    def _copy_same_runs(
        self, same: list[tuple[Arm, str, Arm]], key_cols: list[str], done: set[tuple[Any, ...]]
    ) -> int:
        """Report each reused run under its second arm (row and reconstructions); count them."""
        if not same:
            return 0
        df = pd.read_csv(self.out / "results.csv")
        recon = self.out / "reconstructions"
        copies = []
        for arm, name, origin in same:
            if arm.row_key(name) in done:
                continue
            mask = (df["attack"] == name) & (df["seed"] == origin.seed)
            for col, value in origin.key.items():
                mask &= df[col] == value
            src = df[mask].iloc[0]
            columns = {**arm.key, **arm.columns}
            copies.append(
                {**src.dropna().to_dict(), **columns, "same_run_as": key_label(origin.key)}
            )
            shutil.copyfile(
                recon / f"{run_tag(origin.key, name, origin.seed)}.safetensors",
                recon / f"{self._tags[arm.row_key(name)]}.safetensors",
            )
        append_rows(self.out, copies)
        return len(copies)

    # -- outputs -----------------------------------------------------------------------------------
    def reconstructions(
        self, key: Mapping[str, Any], attack: str, seed: int
    ) -> tuple[Tensor, Tensor] | None:
        """The saved (images, labels) of one run, or None when it has none."""
        path = self.out / "reconstructions" / f"{run_tag(key, attack, seed)}.safetensors"
        if not path.exists():
            return None
        rec = load_file(str(path))
        return rec["images"], rec["labels"]

    def grid_rows(
        self, runs: Mapping[str, tuple[Mapping[str, Any], str, int]]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """``{row label: (key, attack, seed)}`` -> ``{row label: (images, labels)}`` of saved runs."""
        rows = {label: self.reconstructions(*run) for label, run in runs.items()}
        return {label: rec for label, rec in rows.items() if rec is not None}

    def save(self, fig: Any, name: str) -> None:
        """Save a figure as ``fig_<name>.png`` and ``.pdf`` in the output folder."""
        save_figure(fig, self.out, name)

    def report(self, table: pd.DataFrame, name: str, caption: str) -> pd.DataFrame:
        """Save ``table`` as ``table_<name>.{md,tex,csv}`` and show it under ``caption``."""
        save_table(table, self.out, name)
        show(f"{caption}\n\n{table.to_markdown(index=False)}")
        return table

    def table(
        self,
        df: pd.DataFrame,
        by: Sequence[str],
        metrics: Sequence[str],
        *,
        name: str = "results_mean_std",
        digits: int = 3,
    ) -> pd.DataFrame:
        """Mean ± std [95 % interval] of the ``metrics`` present in ``df``, per ``by`` group."""
        present = [m for m in metrics if m in df and df[m].notna().any()]
        table = summary_table(df, list(by), present, digits=digits)
        return self.report(table, name, INTERVAL_NOTE)

    def paired(
        self,
        df: pd.DataFrame,
        condition: str,
        reference: str,
        by: Sequence[str],
        *,
        name: str,
        caption: str,
        metric: str = "acc1",
    ) -> pd.DataFrame:
        """Paired differences to ``reference`` on the same seeds (see :func:`paired_table`)."""
        table = paired_table(
            df, metric, condition_col=condition, reference=reference, group_cols=list(by)
        )
        return self.report(table, name, caption)

    def ranked(
        self,
        df: pd.DataFrame,
        metrics: Sequence[str],
        *,
        by: str = "acc1",
        higher_is_better: bool = True,
        name: str = "leaderboard",
    ) -> pd.DataFrame:
        """Mean ± std [95 % interval] per attack, ranked by the mean of ``by`` in each family.

        One row per (threat-model family, attack); ``rank`` restarts at 1 in each family
        (white-box, black-box, label-only, and the baselines), so an attack is only ranked
        against attacks of its own threat model. Saved as ``table_<name>``.
        """
        present = [m for m in metrics if m in df and df[m].notna().any()]
        groups = ["family", "attack"]
        table = summary_table(df, groups, present, digits=3)
        means = df.groupby(groups)[by].mean().rename("_mean").reset_index()
        table = table.merge(means, on=groups, how="left").sort_values(
            ["family", "_mean"], ascending=[True, not higher_is_better], na_position="last"
        )
        table.insert(1, "rank", table.groupby("family").cumcount() + 1)
        caption = f"Ranked by mean {by} within each threat-model family. {INTERVAL_NOTE}"
        return self.report(table.drop(columns="_mean").reset_index(drop=True), name, caption)

    def per_class(
        self, df: pd.DataFrame, key: Sequence[str] = (), *, variant: str = ""
    ) -> pd.DataFrame:
        """Evaluator Acc@1 of every saved run of ``df``, per private class (tidy).

        Args:
            df: Result rows (``attack``, ``seed`` and the ``key`` columns of their arms).
            key: The arm key columns that, with attack and seed, name a run's reconstructions.
            variant: Whose evaluator scores them.

        Returns:
            One row per (run, class): the key columns, ``attack``, ``seed``, ``class``, ``acc1``
            (share of the class's reconstructions the evaluator assigns to it) and ``n``.
        """
        self.pool.wait(self.warm)
        setting = self.settings[variant]
        label_map = setting.split.private_to_evaluator
        rows = []
        for run in df[[*key, "attack", "seed"]].drop_duplicates().to_dict("records"):
            saved = self.reconstructions({k: run[k] for k in key}, run["attack"], int(run["seed"]))
            if saved is None:
                continue
            images, labels = saved
            pred = predict_logits(setting.evaluator.model, images, device=self.device).argmax(1)
            hit = pred == label_map[labels]
            for c in sorted(set(labels.tolist())):
                mine = labels == c
                rows.append(
                    {
                        **run,
                        "class": c,
                        "acc1": float(hit[mine].double().mean()),
                        "n": int(mine.sum()),
                    }
                )
        return pd.DataFrame(rows, columns=[*key, "attack", "seed", "class", "acc1", "n"])

    def floors(self, df: pd.DataFrame, metric: str = "acc1") -> dict[str, float]:
        """Each baseline's mean ``metric``: the reference lines of trend figures."""
        return {
            n.replace("_", " "): float(df.loc[df["attack"] == n, metric].mean())
            for n in self.baselines
            if n in set(df["attack"])
        }

    def describe(self) -> str:
        """What the setting(s) hold, once built: evaluator, extractor and GAN prior (Markdown)."""
        self.pool.wait(self.warm)
        lines = []
        for variant, s in self.settings.items():
            head = f"**{variant}**: " if variant else ""
            lines.append(
                f"{head}Evaluator `{s.recipe['evaluator_arch']}`: test accuracy "
                f"**{s.evaluator.test_acc:.3f}** over {s.split.evaluator_num_classes} classes "
                f"(cache hit: {s.evaluator.cache_hit}). delta_face extractor `{s.face.name}`: test "
                f"accuracy {s.face.test_acc:.3f}. GAN prior: {s.prior.meta['generator_steps']} "
                f"generator steps on {len(s.split.public)} public images."
            )
        return "\n\n".join(lines)

    def gan_samples(self, n: int = 64, *, variant: str = "") -> Tensor:
        """``n`` random samples of a variant's GAN prior (seeded), on the CPU."""
        prior = self.settings[variant].prior
        z = torch.randn(n, prior.generator.latent_dim, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            return prior.generator(z.to(self.device)).cpu()

    def browse(self, df: pd.DataFrame, key: Sequence[str]) -> None:
        """An ipywidgets browser of every saved reconstruction (JupyterLab; a note when headless)."""
        from mibench_lib.progress import headless

        if headless():
            print("Headless run: open this notebook in JupyterLab to browse the reconstructions.")
            return
        import ipywidgets as widgets
        import matplotlib.pyplot as plt

        from mibench_lib.plots import plot_image_grid

        def view(**choice: Any) -> None:
            seed, attack = choice.pop("seed"), choice.pop("attack")
            rec = self.reconstructions(choice, attack, seed)
            if rec is None:
                print(f"no reconstructions saved for {choice}, {attack}, seed {seed}")
                return
            images, labels = rec
            plot_image_grid(images, nrow=min(16, len(images)), title=f"labels {labels.tolist()}")
            plt.show()

        options = {c: sorted(df[c].dropna().unique().tolist()) for c in [*key, "attack", "seed"]}
        widgets.interact(view, **options)

    def close(self) -> None:
        """Stop the workers and say how long the notebook took."""
        self.pool.close()
        show(
            f"Notebook wall time: {time.perf_counter() - self.t_start:.1f} s. Outputs in `{self.out}`."
        )


def open_study(
    params: Mapping[str, Any], *, variants: Mapping[str, Mapping[str, Any]] | None = None
) -> Study:
    """Open a study from a notebook's parameters (e.g. ``open_study(globals())``).

    Args:
        params: A mapping holding the shared parameters of every study notebook (dataset,
            evaluator, GAN, attacks, seeds, out_dir, ...); other keys are ignored.
        variants: Optional variant name -> parameter overrides (one level deep for mappings), each
            giving its own setting, e.g. ``{"16": {"dataset_kwargs": {"resolution": 16}}}``. Arms
            name the variant they belong to.
    """
    return Study(params, variants)

"""Every configuration runs end to end, not only validates.

``parameters/<study>/<config>.yaml`` other than ``tiny.yaml`` (which tests/test_notebooks.py runs
as it is) are executed here with their budgets cut. ``default.yaml`` runs on its embedded data.
The others (today the ``celeba64.yaml`` files) name real data and GPU-sized budgets; a crash there
costs hours of GPU time. Each of those is executed through the real runner on a generated CelebA
in its official on-disk layout (``img_align_celeba/``, ``identity_CelebA.txt``,
``list_eval_partition.txt``; a few hundred identities), on the CPU, with every
epoch/step/iteration/restart budget cut to one or two. Everything else stays as the file says:
64 px, the face architectures, a hundred private classes (more than a batch holds), the attacks
and defenses it lists, and the local-weights loaders for the weight files it names. The point is
to run every code path the configuration takes, not to measure anything.

The studies share one artifact cache, so the evaluator, the delta_face extractor and the GAN
(identical recipes) are trained once for the whole module.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from filelock import FileLock

from mibench_lib.attacks import SPECS
from mibench_lib.studies.params import load_parameters
from mibench_lib.studies.runner import MARKER, RunFailedError, run_config
from mibench_lib.testing import make_celeba_fixture, make_classifier_weights, make_inception_weights

ROOT = Path(__file__).resolve().parents[2]
# tiny.yaml runs in tests/test_notebooks.py. default.yaml runs here on its embedded data (mnist5k
# ships inside a package) with its budgets cut like the others.
SKIP = {"tiny"}
CONFIGS = sorted(
    p
    for p in (ROOT / "parameters").glob("*/*.yaml")
    if p.stem not in SKIP and not p.name.startswith("_")
)
# Configurations that crash today in code outside this test, and why. Strict: once the code is
# fixed the run passes, the xfail fails, and the entry must go.
KNOWN_FAILURES: dict[str, str] = {}


def _config_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _config_params() -> list:
    params = []
    for path in CONFIGS:
        reason = KNOWN_FAILURES.get(_config_id(path))
        marks = (
            [pytest.mark.xfail(strict=True, raises=RunFailedError, reason=reason)] if reason else []
        )
        params.append(pytest.param(path, id=_config_id(path), marks=marks))
    return params


# The CelebA fixture (a few hundred identities, 64 px after loading): NUM_PRIVATE private
# identities, more classes than a training batch holds (the real files use 1000); the first
# ATTACKED (those with the most images, which the loader ranks first) have 5 images, 4 in
# private_train: enough real samples for PRDC's k=3. The other private identities have 2 (one
# train, one test image) and PUBLIC identities one image each, for the GAN.
NUM_PRIVATE = 100
ATTACKED = 2
PUBLIC = 128
IMAGES = [5] * ATTACKED + [2] * (NUM_PRIVATE - ATTACKED) + [1] * PUBLIC

# Budgets cut to the bone. Attack dicts are merged into the file's (a -p override replaces a whole
# dict, so the full dict is restated).
EPOCHS = 1
ATTACK_BUDGETS: dict[str, dict[str, Any]] = {
    "gmi": {"steps": 1, "restarts": 2},
    # init_batch 8 < the 10 attacked entries: more entries lack a start point than one search
    # batch holds, the case missing_start="random" must survive on thousands of CelebA entries.
    # query_batch 8: sphere queries go out in chunks, as a real run's 5000 x 32 do (default 256).
    "brep_mi": {
        "max_iters": 2,
        "max_stale_iters": 2,
        "init_batch": 8,
        "max_init_batches": 2,
        "query_batch": 8,
    },
    "miface": {"max_iter": 2, "window": 1},
    "deepinversion": {"iterations": 2},
    "kedmi": {"steps": 1, "samples": 2},
    "plg_mi": {"steps": 1, "samples": 2},
    "lomma_gmi": {"steps": 1, "restarts": 2},
    "lomma_kedmi": {"steps": 1, "samples": 2},
    "vmi": {"iterations": 1, "samples_per_step": 2, "samples": 2},
    "if_gmi": {"steps": [1, 1], "pool": 8, "samples": 2},
    "rlb_mi": {"episodes": 2, "batch_size": 2, "learn_start": 1},
    "mirror": {"population": 4, "pool_size": 8, "generations": 1},
    "c2fmi": {"coarse_steps": 1, "generations": 1, "adapter_epochs": 1, "starts": 4, "keep": 3},
    "lokt": {"steps": 1, "samples": 1},
    "secretgen": {"candidates": 2, "steps": 1},
}
# Target priors (trained with the target's answers) get the same cut, whether or not the file
# sets their keyword arguments (their defaults are the papers' budgets).
PRIOR_BUDGETS: dict[str, dict[str, Any]] = {
    "kedmi_gan": {"epochs": 1},
    # widths 8 and one critic step: at the official 64 features the two GAN steps of the 64 px
    # cGAN took 337 s of a 16-minute leaderboard/celeba64 run (LOKT's T-ACGAN 182 s)
    "plg_cgan": {
        "iterations": 2,
        "top_n": 4,
        "batch_size": 8,
        "n_dis": 1,
        "gen_features": 8,
        "dis_features": 8,
    },
    "lomma_surrogates": {"epochs": 1},
    "style_generator": {"iterations": 2, "batch_size": 4, "channels": 8, "z_dim": 16, "w_dim": 16},
    "c2fmi_embedding": {"epochs": 1},
    "c2fmi_adapter": {},
    "lokt_tacgan": {
        "warmup_iterations": 1,
        "iterations": 2,
        "samples_per_class": 2,
        "batch_size": 8,
        "surrogate_epochs": 1,
        "surrogate_batch_size": 8,
        "surrogate_images_per_epoch": 8,
        "n_dis": 1,
        "gen_features": 8,
        "dis_features": 8,
    },
    "secretgen_inpainter": {"epochs": 1, "width": 4, "critic_width": 8, "latent_dim": 8},
}
# Chunk sizes the file sets for GPU memory (GMI/MIFace batch_size: 500 of 5000 entries) are cut
# below the fixture's entry count, so the chunked path runs here too.
CHUNK_KEYS = ("batch_size",)
CHUNK = 8
AT_BUDGETS = {"steps": 1, "eval_steps": 1}
DEFENSE_BUDGETS = {"tl_dmi": {"pretrain_epochs": 1}}
# Accuracy is a multiple of 1/NUM_PRIVATE (one test image per identity), so thresholds sit halfway
# between multiples (float32 accuracies). Before training the target predicts one class for every
# image: accuracy 1/NUM_PRIVATE passes the first threshold at step 0; the one epoch (checked after
# every step) usually reaches the second. A threshold never reached is reported by the notebook.
THRESHOLDS = [0.5 / NUM_PRIVATE, 1.5 / NUM_PRIVATE]
# Anything still this large after reduction is a budget nobody cut (a new key in a config).
BUDGET_KEY = re.compile(r"epoch|step|iter|restart|batches")
MAX_BUDGET = 8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CelebA fixture, local weight files and an artifact cache shared by the module.

    Under pytest-xdist the folder is shared by the session's workers (the artifact cache locks
    each build), so the evaluator, extractor and GAN are trained once whichever worker runs which
    configuration.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    base = base / "configs_e2e"
    base.mkdir(parents=True, exist_ok=True)
    celeba = base / "celeba"
    with FileLock(base / ".lock"):
        if not (base / ".fixture_written").exists():
            make_celeba_fixture(celeba, identities=len(IMAGES), images_per_identity=IMAGES)
            (base / ".fixture_written").touch()
    return {"base": base, "celeba": celeba, "cache": base / "cache", "weights": base / "weights"}


def _local_weights(key: str, params: dict[str, Any], weights: Path) -> str:
    """A random-init checkpoint in the format the loader behind ``key`` reads."""
    weights.mkdir(parents=True, exist_ok=True)
    with FileLock(weights / ".lock"):
        if key == "face_weights":
            path = weights / f"{params['face_arch']}.pth"
            if not path.exists():  # the literature's layout: {"state_dict": {"module.<key>": ..}}
                make_classifier_weights(path, params["face_arch"], 1000)  # its head is skipped
            return str(path)
        if key == "inception_weights":
            path = weights / "pt_inception-2015-12-05-6726825d.pth"
            if not path.exists():  # pytorch-fid's FID-Inception file layout, random values
                make_inception_weights(path)
            return str(path)
    raise AssertionError(f"no local-weights fixture for {key!r}: add one to {__file__}")


def _cut_training(raw: dict[str, Any]) -> dict[str, Any]:
    """One epoch for every ``*_train`` recipe of ``raw``; the GAN gets one generator step."""
    over: dict[str, Any] = {}
    for key, value in raw.items():
        if key.endswith("_train") and isinstance(value, dict):
            over[key] = {**value, "epochs": EPOCHS}
            if "eval_every" in value:  # threshold checks after every step of the short epoch
                over[key]["eval_every"] = 1
    if "gan_train" in raw:  # enough critic batches for one generator step (one every n_critic)
        batches = math.ceil(PUBLIC / raw["gan_train"]["batch_size"])
        over["gan_train"]["epochs"] = math.ceil(raw["gan_train"]["n_critic"] / batches)
    return over


def reduced_overrides(raw: dict[str, Any], ws: dict[str, Path]) -> dict[str, Any]:
    """The ``-p`` overrides that make configuration ``raw`` run in seconds on the fixture."""
    over: dict[str, Any] = {
        "device": "cpu",
        "workers": 1,  # the GPU path: one process (what `workers: 0` picks on CUDA)
        "cache_dir": str(ws["cache"]),
        "seeds": [0],
        "classes": list(range(ATTACKED)),
        "progress": False,
    }
    if "root" in raw.get("dataset_kwargs", {}):  # a local dataset: the generated CelebA folder
        over["dataset_kwargs"] = {
            **raw["dataset_kwargs"],
            "root": str(ws["celeba"]),
            "num_private": NUM_PRIVATE,
        }
    over.update(_cut_training(raw))
    if "per_resolution" in raw:  # each resolution's own recipes, cut the same way
        over["per_resolution"] = {
            res: {**part, **_cut_training(part)} for res, part in raw["per_resolution"].items()
        }
    over["attack_kwargs"] = {}
    for name in raw["attacks"]:
        kwargs = {**raw.get("attack_kwargs", {}).get(name, {}), **ATTACK_BUDGETS.get(name, {})}
        for key in CHUNK_KEYS:
            if key in kwargs:
                kwargs[key] = min(kwargs[key], CHUNK)
        over["attack_kwargs"][name] = kwargs
    priors = {
        p.name for a in raw["attacks"] for p in (*SPECS[a].target_priors, *SPECS[a].public_priors)
    }
    missing = priors - set(PRIOR_BUDGETS)
    assert not missing, f"add the priors {sorted(missing)} to PRIOR_BUDGETS"
    if priors:
        over["prior_kwargs"] = {
            p: {**raw.get("prior_kwargs", {}).get(p, {}), **PRIOR_BUDGETS[p]} for p in priors
        }
    if "at_kwargs" in raw:
        over["at_kwargs"] = {**raw["at_kwargs"], **AT_BUDGETS}
    if "eps_grid" in raw:  # one radius per norm: every norm's code path, fewer targets
        over["eps_grid"] = {norm: list(eps[:1]) for norm, eps in raw["eps_grid"].items()}
    if "defenses" in raw:  # every entry (knob sweeps included), budgets cut
        over["defenses"] = [
            {**spec, "kwargs": {**spec.get("kwargs", {}), **DEFENSE_BUDGETS[spec["name"]]}}
            if spec["name"] in DEFENSE_BUDGETS
            else spec
            for spec in raw["defenses"]
        ]
    if "thresholds" in raw:
        over["thresholds"] = THRESHOLDS
    for key in ("face_weights", "inception_weights"):
        if key in raw:  # the file names this local file (or documents it): exercise its loader
            over[key] = _local_weights(key, raw, ws["weights"])
    return over


def _budgets(value: Any, where: str = "") -> list[str]:
    """Every ``<budget key>: n`` with n > MAX_BUDGET, nested dicts and lists included."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if BUDGET_KEY.search(str(k)) and isinstance(v, int) and v > MAX_BUDGET:
                found.append(f"{path}={v}")
            found += _budgets(v, path)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _budgets(v, f"{where}[{i}]")
    return found


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", _config_params())
def test_config_runs_end_to_end_on_fixture_data(
    path: Path, workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    study = path.parent.name
    notebook = ROOT / "notebooks" / f"{study}.ipynb"
    raw = yaml.safe_load(path.read_text())
    before = copy.deepcopy(raw)
    overrides = reduced_overrides(raw, workspace)
    assert raw == before, "the reduction must not change the file's values"
    params = load_parameters(path, notebook, overrides=overrides)
    assert not _budgets(params), f"budgets left uncut in {path.name}: {_budgets(params)}"
    # The file's own shape survives: its architectures, resolution and attacks.
    for key in ("target_arch", "evaluator_arch", "face_arch", "attacks", "gan"):
        if key in raw:
            assert params[key] == raw[key], key
    if "resolutions" in raw:  # the resolution study sets it per setting
        assert params["resolutions"] == raw["resolutions"]
    else:
        assert params["dataset_kwargs"]["resolution"] == raw["dataset_kwargs"]["resolution"]

    # One thread in the kernel (it inherits these): on a shared 2-core machine two OpenMP threads
    # spin against each other and against the other pytest worker (a 512 x 512 eigvals in FID
    # measured 0.2 s with one thread, 8 s with two).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    start = time.perf_counter()
    out = run_config(
        path,
        out_root=workspace["base"] / "outputs",
        overrides=overrides,
        progress=False,
        timeout_s=1800,
    )
    wall = time.perf_counter() - start
    print(f"{study}/{path.stem}: {wall:.0f} s")

    for name in ("parameters.yaml", "environment.json", f"{study}.ipynb", MARKER):
        assert (out / name).exists(), name
    df = pd.read_csv(out / "results.csv")
    assert len(df) > 0
    assert set(params["attacks"]) <= set(df["attack"])
    assert (df["n_images"] % (ATTACKED * params.get("samples_per_class", 1)) == 0).all()
    metrics = ("acc1", "acc5", "delta_eval", "delta_face", "fid_eval", "target_acc")
    for col in metrics:
        assert df[col].map(math.isfinite).all(), (col, df[["attack", col, "unavailable"]])
    # PRDC needs k + 1 = 4 images per class: a class with fewer is skipped, and says so
    said = df["prdc_skipped"].astype(object).fillna("").ne("") | df["unavailable"].astype(
        object
    ).fillna("").astype(str).str.contains("PRDC")
    scored = df["precision"].map(math.isfinite) | said
    assert scored.all(), df[["attack", "precision", "prdc_skipped"]]
    if (
        params.get("samples_per_class", 1)
        * params["attack_kwargs"].get("gmi", {}).get("restarts", 1)
        >= 4
    ):
        assert df.loc[df["attack"] == "gmi", "precision"].map(math.isfinite).all()
    figures = sorted(p.name for p in out.glob("fig_*.png"))
    assert any(f.startswith("fig_reconstructions") for f in figures), figures
    main_table = "leaderboard" if study == "leaderboard" else "results_mean_std"
    assert (out / f"table_{main_table}.csv").exists()
    if params.get("inception_weights"):
        assert df["fid_inception"].map(math.isfinite).all(), df["unavailable"]
        assert set(df["prdc_features"]) == {"inception"}
    if params.get("face_weights"):
        assert df["face_acc"].isna().all()  # used as is, never trained
    if "brep_mi" in params["attacks"]:
        brep = df[df["attack"] == "brep_mi"]
        assert brep["start_found"].between(0, 1).all()

"""Quality of the public StyleGAN2-ADA prior against the DCGAN prior on 32 px digits.

Trains :func:`~mibench_lib.generators.stylegan.build_style_generator` with its CPU defaults (no
cache) on the public half of mnist5k (digits 5-9) at 32 px, saves an 8x8 grid of truncation-1
samples to ``docs/figures/style_generator_samples.png``, and reports FID against the public
images in the feature space of the studies' evaluator (``mnist_eval``, 8 epochs) next to the
FID of the studies' DCGAN prior (latent 100, width 8, critic 8, WGAN-GP 100 epochs), both from
2,500 samples. Writes ``benchmarks/results/style_prior_fid.json``.

    OMP_NUM_THREADS=1 python benchmarks/style_prior_fid.py [--cache DIR] [--kwargs JSON]

Train seconds are wall time and process CPU time (the latter is the fair cost on a busy
machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mibench_lib.artifacts import cached_evaluator, cached_gan
from mibench_lib.cache import ArtifactCache
from mibench_lib.data import load_dataset
from mibench_lib.generators.stylegan import build_style_generator, load_style_generator
from mibench_lib.metrics.fid import fid

ROOT = Path(__file__).resolve().parents[1]
EVALUATOR = {"arch": "mnist_eval", "train_cfg": {"epochs": 8, "batch_size": 64, "lr": 0.001}}
DCGAN = {"latent_dim": 100, "width": 8, "critic_width": 8}
DCGAN_TRAIN = {"epochs": 100, "batch_size": 64, "n_critic": 5, "gp_weight": 10.0}


def _samples(g, n: int, latent_dim: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return torch.cat([g(zc) for zc in z.split(500)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=None, help="ArtifactCache root (default .mibench-cache)")
    parser.add_argument("--kwargs", default="{}", help="JSON overrides of the build defaults")
    parser.add_argument("--samples", type=int, default=2500)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/style_prior_fid.json"))
    parser.add_argument("--figure", default=str(ROOT / "docs/figures/style_generator_samples.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    split = load_dataset("mnist5k", resolution=32)
    public = split.public.unlabelled()
    cache = ArtifactCache(args.cache)

    kwargs = json.loads(args.kwargs)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tensors, meta = build_style_generator(public, seed=0, progress=True, **kwargs)
    style_wall, style_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    style = load_style_generator(tensors, meta, "cpu")

    evaluator = cached_evaluator(cache, split, seed=0, progress=True, **EVALUATOR).model
    wall0, cpu0 = time.perf_counter(), time.process_time()
    gan = cached_gan(cache, public, **DCGAN, train_cfg=DCGAN_TRAIN, seed=0, progress=True)
    dcgan_wall, dcgan_cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    real = public.images
    fake_style = _samples(style, args.samples, style.z_dim, 1)
    fake_dcgan = _samples(gan.generator, args.samples, DCGAN["latent_dim"], 1)
    result = {
        "dataset": "mnist5k public (digits 5-9), 32 px",
        "real_images": len(real),
        "samples": args.samples,
        "feature_space": "evaluator mnist_eval (8 epochs, seed 0)",
        "fid_style_generator": fid(evaluator, real, fake_style),
        "fid_dcgan": fid(evaluator, real, fake_dcgan),
        "fid_public_half_vs_half": fid(evaluator, real[::2], real[1::2]),
        "style_generator": {
            "settings": {k: v for k, v in meta.items() if k not in ("d_loss", "g_loss", "r1")},
            "parameters": sum(p.numel() for p in style.parameters()),
            "train_wall_s": style_wall,
            "train_cpu_s": style_cpu,
            "final_d_loss": meta["d_loss"][-1],
        },
        "dcgan": {
            "settings": {**DCGAN, **DCGAN_TRAIN},
            "parameters": sum(p.numel() for p in gan.generator.parameters()),
            "cache_hit": gan.cache_hit,
            "train_wall_s": gan.meta.get("wall_time_s"),
            "this_run_wall_s": dcgan_wall,
            "this_run_cpu_s": dcgan_cpu,
        },
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    from torchvision.utils import save_image

    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    save_image(fake_style[:64], args.figure, nrow=8, padding=2, pad_value=1.0)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("fid")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""WGAN-GP training of a GAN prior on public data only.

Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017, as used by GMI (Zhang et
al., CVPR 2020): critic loss E[D(G(z))] - E[D(x)] + lambda_gp * E[(||grad D(x_hat)|| - 1)^2] with
x_hat on random lines between real and fake images, ``n_critic`` critic steps per generator step,
generator loss -E[D(G(z))]; Adam(2e-4, betas (0.5, 0.999)), batch 64, gradient-penalty weight 10.
The target model is never involved: the prior only ever sees public images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mibench_lib.data._types import ImageSet
from mibench_lib.models.train import batch_loader
from mibench_lib.progress import tqdm


def gradient_penalty(
    critic: nn.Module, real: Tensor, fake: Tensor, *, rng: torch.Generator | None = None
) -> Tensor:
    """Mean of (||grad_x D(x_hat)||_2 - 1)^2 over random interpolates x_hat of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=rng).to(real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@dataclass
class GANReport:
    """Loss histories (one entry per generator step) of a WGAN-GP run."""

    critic_losses: list[float] = field(default_factory=list)
    generator_losses: list[float] = field(default_factory=list)
    wasserstein: list[float] = field(default_factory=list)
    steps: int = 0


def train_wgan_gp(
    generator: nn.Module,
    critic: nn.Module,
    public: ImageSet,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    n_critic: int = 5,
    gp_weight: float = 10.0,
    device: torch.device | str = "cpu",
    rng: torch.Generator | None = None,
    progress: bool = True,
) -> GANReport:
    """Train ``generator`` and ``critic`` with WGAN-GP on the public images (labels ignored).

    Args:
        generator: (N, latent_dim) -> images in [0, 1]; must have ``latent_dim``.
        critic: images -> (N,) scores.
        public: The attacker's auxiliary data; its labels are never read.
        epochs: Passes over ``public`` counted in critic batches (GMI: 100 on MNIST).
        n_critic: Critic steps per generator step.
        gp_weight: Gradient-penalty weight lambda.
        rng: Seeds batch order, latents and interpolation weights (CPU generator).

    Returns:
        A :class:`GANReport`; both networks are left in eval mode.
    """
    device = torch.device(device)
    generator.to(device).train()
    critic.to(device).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
    loader = batch_loader(public, batch_size=batch_size, rng=rng)
    report = GANReport()
    d_steps = 0
    bar = tqdm(total=epochs * len(loader), desc="GAN (WGAN-GP)", disable=not progress, leave=False)
    for _ in range(epochs):
        for real, _labels in loader:
            real = real.to(device)
            z = torch.randn(real.shape[0], generator.latent_dim, generator=rng).to(device)
            with torch.no_grad():
                fake = generator(z)
            w_dist = critic(real).mean() - critic(fake).mean()
            loss_d = -w_dist + gp_weight * gradient_penalty(critic, real, fake, rng=rng)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            d_steps += 1
            bar.update(1)
            if d_steps % n_critic == 0:
                z = torch.randn(batch_size, generator.latent_dim, generator=rng).to(device)
                loss_g = -critic(generator(z)).mean()
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                report.critic_losses.append(loss_d.item())
                report.generator_losses.append(loss_g.item())
                report.wasserstein.append(w_dist.item())
                report.steps += 1
                bar.set_postfix(w=f"{w_dist.item():.3f}")
    bar.close()
    generator.eval()
    critic.eval()
    return report

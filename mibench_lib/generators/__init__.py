"""GAN priors: trained on public data only, exposing a latent dimension and block-wise synthesis."""

from mibench_lib.generators.base import Generator
from mibench_lib.generators.dcgan import DCGANGenerator, WGANCritic
from mibench_lib.generators.train import GANReport, gradient_penalty, train_wgan_gp

#: name -> (generator class, critic class)
GENERATORS = {"dcgan": (DCGANGenerator, WGANCritic)}

__all__ = [
    "GENERATORS",
    "DCGANGenerator",
    "GANReport",
    "Generator",
    "WGANCritic",
    "gradient_penalty",
    "train_wgan_gp",
]

"""addmlib: the Adversarial Denoising Diffusion Model (ADDM) for unsupervised anomaly detection in brain MRI.

Modules: ``diffusion`` (schedules, forward/reverse process, samplers, reconstruct), ``noise`` (Gaussian, simplex),
``nets`` (U-Net, discriminator), ``losses`` (L_DDPM + lambda L_Adv), ``config`` (typed parameters), ``cli`` (one-line
refusals of bad input), ``pipeline`` (papermill runner), ``provenance``, ``fileio``, ``runtime``.
"""

from .diffusion import GaussianDiffusion, beta_schedule, scale_t_star, strided_timesteps
from .losses import addm_generator_terms, discriminator_step_loss
from .nets import Discriminator, DiscriminatorConfig, UNet, UNetConfig
from .noise import SimplexNoise, make_noise

__version__ = "0.1.0"

__all__ = ["GaussianDiffusion", "beta_schedule", "scale_t_star", "strided_timesteps", "addm_generator_terms",
           "discriminator_step_loss", "Discriminator", "DiscriminatorConfig", "UNet", "UNetConfig", "SimplexNoise",
           "make_noise", "__version__"]

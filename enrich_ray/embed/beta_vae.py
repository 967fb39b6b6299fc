"""The β-VAE of Burgess et al. 2018 for 1x64x64 frames, and its two losses.

Encoder: four 4x4 stride-2 convolutions with 32 channels, fully connected 256, 256, then
2 x latent_dim (posterior mean and log-variance); the decoder mirrors it and returns logits.
Loss: Bernoulli reconstruction (summed over pixels) plus β·KL (Higgins) or γ·|KL − C| with
the capacity C raised linearly from 0 to capacity_max over capacity_iters steps (Burgess).

The embedding of a frame is its posterior mean minus `latent_center` (the mean posterior
mean over the training sample, set once after training and saved with the weights). Under
weak KL pressure the posterior means share a large common offset; uncentred, every cosine
is then close to 1 and nearest neighbours carry no information (see diagnostics.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enrich_ray.config import VAEConfig

INPUT_SIZE = 64  # the architecture's input side: four stride-2 convolutions down to 4x4
CHANNELS = 32
HIDDEN = 256
LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite in float32 and bfloat16


class BetaVAE(nn.Module):
    """Encoder and decoder of the Burgess et al. (2018) β-VAE."""

    def __init__(self, latent_dim: int = 128):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {latent_dim}")
        self.latent_dim = latent_dim
        flat = CHANNELS * 4 * 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, CHANNELS, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(CHANNELS, CHANNELS, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(CHANNELS, CHANNELS, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(CHANNELS, CHANNELS, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(flat, HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, flat), nn.ReLU(inplace=True),
            nn.Unflatten(1, (CHANNELS, 4, 4)),
            nn.ConvTranspose2d(CHANNELS, CHANNELS, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(CHANNELS, CHANNELS, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(CHANNELS, CHANNELS, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(CHANNELS, 1, 4, 2, 1),
        )
        self.register_buffer("latent_center", torch.zeros(latent_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation for layers followed by ReLU, LeCun for the two output layers, zero biases.

        PyTorch's default (kaiming_uniform with a=√5) shrinks the signal by about √3 per layer;
        through seven layers the posterior mean barely depends on the input, the decoder ignores
        the latent code and the model sits at the mean image for hundreds of steps.
        """
        last = {id(self.encoder[-1]), id(self.decoder[-1])}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.ConvTranspose2d):  # each output sees (kernel/stride)² taps per channel
                fan_in = m.in_channels * (m.kernel_size[0] // m.stride[0]) * (m.kernel_size[1] // m.stride[1])
            elif isinstance(m, nn.Linear):
                fan_in = m.in_features
            else:
                continue
            gain = 1.0 if id(m) in last else 2.0
            nn.init.normal_(m.weight, 0.0, (gain / fan_in) ** 0.5)
            nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of (N, 1, 64, 64) frames in [0, 1]."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding before normalisation: posterior mean minus the training sample's mean of it."""
        mu, _ = self.encode(x)
        return mu - self.latent_center

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits (N, 1, 64, 64) of latent codes."""
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of a reparameterised sample's reconstruction, with the posterior's mean and log-variance."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def build_model(vae: VAEConfig) -> BetaVAE:
    """A freshly initialised model; the same seed gives the same weights on every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(vae.seed)
        return BetaVAE(vae.latent_dim)


def kl_per_unit(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) of every image and latent unit, in nats: shape (N, latent_dim)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def capacity_at(step: int, vae: VAEConfig) -> float:
    """The capacity C (nats) at a training step: linear from 0 to capacity_max, then flat."""
    if vae.capacity_iters <= 0:
        return vae.capacity_max
    return vae.capacity_max * min(1.0, step / vae.capacity_iters)


@dataclass
class LossTerms:
    """One batch's objective and its two parts (per image, averaged over the batch)."""

    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def vae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, vae: VAEConfig, step: int
) -> LossTerms:
    """Reconstruction + β·KL, or + γ·|KL − C(step)|, as VAEConfig.loss chooses; computed in float32."""
    n = x.shape[0]
    recon = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="sum") / n
    kl = kl_per_unit(mu.float(), logvar.float()).sum(dim=1).mean()
    if vae.loss == "beta":
        total = recon + vae.beta * kl
    elif vae.loss == "capacity":
        total = recon + vae.gamma * (kl - capacity_at(step, vae)).abs()
    else:
        raise ValueError(f"vae.loss: unknown loss {vae.loss!r} (expected 'beta' or 'capacity')")
    return LossTerms(total, recon, kl)

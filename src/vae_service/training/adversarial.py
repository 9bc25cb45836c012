"""The adversarial term that sharpens a VAE's decoder.

A VAE decoder outputs the mean of p(x|z), an average over plausible images, so its edges
are soft. Latent diffusion's autoencoder (Rombach et al. 2022, after VQGAN, Esser et al.
2021) adds a patch discriminator's hinge loss to the reconstruction term, weighted by the
ratio of the two terms' gradient norms at the decoder's last layer, so that neither
swamps the other whatever their scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Gradient-norm ratios are clamped, as in Rombach et al.'s code, to survive a vanishing
# adversarial gradient early in training.
MAX_ADAPTIVE_WEIGHT = 1e4


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): one real/fake logit per overlapping patch, so it judges
    local texture and edges, which is what blur destroys, rather than global layout."""

    def __init__(self, channels: int, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = channels
        for i in range(layers):
            c_out = width * 2**i
            blocks += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        blocks.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)[-1]

    def features(self, images: Tensor) -> list[Tensor]:
        """Each hidden layer's activations, then the patch logits."""
        # Inputs in [-1, 1]: centred, as a discriminator's first layer expects.
        h, out = images * 2 - 1, []
        for layer in self.net:
            h = layer(h)
            if not isinstance(layer, nn.Conv2d):
                out.append(h)
        return [*out, h]


def layers_for(image_size: int) -> int:
    """Two halvings judge 10-pixel patches of a 28-pixel image; three suit 64 pixels."""
    return 2 if image_size <= 32 else 3


def discriminator_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): real above +1, fake below -1."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def generator_hinge_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def feature_matching_loss(real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """Mean L1 distance between the critic's hidden features of each image and of its
    reconstruction, summed over layers (Salimans et al. 2016; pix2pixHD, Wang et al.
    2018): it pulls a reconstruction towards its own image's edges and texture, not just
    towards any image the critic finds real. The real features are targets only."""
    return sum(
        (F.l1_loss(f, r.detach()) for r, f in zip(real[:-1], fake[:-1], strict=True)),
        torch.zeros((), device=fake[-1].device),
    )


def adaptive_weight(rec_loss: Tensor, adv_loss: Tensor, last_layer: Tensor) -> Tensor:
    """||grad rec|| / ||grad adv|| at the decoder's last layer (Esser et al. 2021, eq. 7),
    so the adversarial term moves the output about as much as the reconstruction term."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    ratio = rec_grad.norm() / (adv_grad.norm() + 1e-4)
    return ratio.clamp(0, MAX_ADAPTIVE_WEIGHT).detach()

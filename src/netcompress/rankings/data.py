"""Ranked sets: groups of one crop of one reference image at the five levels of one distortion.

A group is ranked by construction (level 1 is the best), so a network learns image quality from
rankings that cost nothing to label (RankIQA, ICCV 2017). Every training batch draws, with a
seeded generator, a reference, a kind and a crop position; the same crop is cut from the five
distorted versions (the paper's "randomly crop from the original images").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from netcompress.rankings.distortions import KINDS, LEVELS, distortion_series

__all__ = ["RankedSet", "as_tensor", "random_crop", "split_by_reference"]


def as_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 H×W×3 image(s) as a float32 (N, 3, H, W) batch in [0, 1]."""
    array = np.stack(images) if not isinstance(images, np.ndarray) else images
    array = array[None] if array.ndim == 3 else array
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float().div_(255.0)


def _colour(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"a reference image must be a uint8 array (H, W) or (H, W, 3), got {image.dtype} "
                         f"{tuple(image.shape)}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)


class RankedSet:
    """The distorted versions of ``references`` (every kind, every level), cropped into ranked groups.

    Args:
        references: uint8 images (H×W×3, or grey H×W), each at least ``crop`` pixels on each side.
        crop: side of the square crops the network sees.
        kinds: the distortions to draw from (default: all four).
        seed: seed of the noise distortion (each reference gets its own stream).
    """

    def __init__(self, references: Sequence[np.ndarray], crop: int = 64, kinds: Sequence[str] = KINDS,
                 seed: int = 0):
        if not references:
            raise ValueError("a ranked set needs at least one reference image")
        unknown = [k for k in kinds if k not in LEVELS]
        if unknown or not kinds:
            raise ValueError(f"kinds must be some of {', '.join(LEVELS)}, got {list(kinds)!r}")
        self.crop, self.kinds, self.seed = crop, tuple(kinds), seed
        self.references = [_colour(image) for image in references]
        small = [i for i, image in enumerate(self.references) if min(image.shape[:2]) < crop]
        if small:
            shape = self.references[small[0]].shape
            raise ValueError(f"reference {small[0]} is {shape[1]}×{shape[0]} pixels, smaller than the {crop}-pixel "
                             "crop; pass larger images or a smaller crop")
        self.levels = len(LEVELS[self.kinds[0]])
        # series[r][k]: the reference r distorted by kind k at every level, best first, (levels, H, W, 3)
        self.series = [[np.stack(distortion_series(image, kind, seed=seed + 1000 * r)) for kind in self.kinds]
                       for r, image in enumerate(self.references)]

    def identity(self) -> dict:
        """What a training checkpoint records of this set: crop, kinds, noise seed and a SHA-256 of the references."""
        import hashlib

        digest = hashlib.sha256()
        for image in self.references:
            digest.update(f"{image.dtype}{image.shape};".encode())
            digest.update(np.ascontiguousarray(image).data)
        return {"crop": self.crop, "kinds": list(self.kinds), "seed": self.seed, "levels": self.levels,
                "references": len(self.references), "sha256": digest.hexdigest()}

    def batch(self, groups: int, generator: torch.Generator) -> torch.Tensor:
        """``groups`` ranked groups, ``groups × levels`` crops (N, 3, crop, crop), each group best first."""
        crops = []
        for _ in range(groups):
            r = int(torch.randint(len(self.references), (1,), generator=generator))
            k = int(torch.randint(len(self.kinds), (1,), generator=generator))
            crops.append(random_crop(self.series[r][k], self.crop, generator))
        return as_tensor(np.concatenate(crops))


def random_crop(images: np.ndarray, crop: int, generator: torch.Generator) -> np.ndarray:
    """The same random ``crop``×``crop`` window of an image (H, W, …) or a stack of images (N, H, W, …), seeded."""
    height, width = images.shape[-3:-1] if images.ndim == 4 else images.shape[:2]
    top = int(torch.randint(height - crop + 1, (1,), generator=generator))
    left = int(torch.randint(width - crop + 1, (1,), generator=generator))
    window = (slice(top, top + crop), slice(left, left + crop))
    return images[(slice(None), *window)] if images.ndim == 4 else images[window]


def split_by_reference(count: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of ``count`` references split into (train, test) at random, a reference on one side only."""
    if count < 2 or not 0 < test_fraction < 1:
        raise ValueError(f"need at least 2 references and a test fraction in (0, 1), got {count} and {test_fraction}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    test = max(1, min(count - 1, round(count * test_fraction)))
    return sorted(order[test:]), sorted(order[:test])

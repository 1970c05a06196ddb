"""The paper's four distortions, each at five levels of increasing strength (decreasing quality).

Level parameters (level 1 is the mildest):

* ``"jpeg"``: JPEG quality 75, 40, 20, 10, 5 (Pillow, 4:2:0 chroma subsampling);
* ``"jpeg2000"``: JPEG 2000 compression ratio 8, 24, 64, 128, 200 (Pillow's OpenJPEG, one quality layer;
  stronger ratios reach the codec's floor on small crops);
* ``"blur"``: Gaussian blur of standard deviation 0.8, 1.6, 3, 5, 8 pixels (Pillow's ``GaussianBlur``);
* ``"noise"``: white Gaussian noise of standard deviation 5, 12, 25, 45, 75 grey levels (of 255), seeded,
  clipped to [0, 255].

A stronger level never improves a full-reference measure (``tests/test_rankings.py`` checks PSNR
against the reference falls level after level on a real photograph for every kind).
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["KINDS", "LEVELS", "distort", "distortion_series"]

LEVELS: dict[str, tuple[float, ...]] = {
    "jpeg": (75, 40, 20, 10, 5),
    "jpeg2000": (8, 24, 64, 128, 200),
    "blur": (0.8, 1.6, 3.0, 5.0, 8.0),
    "noise": (5.0, 12.0, 25.0, 45.0, 75.0),
}
KINDS = tuple(LEVELS)


def _image(array: np.ndarray):
    from PIL import Image

    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise ValueError(f"an image must be a uint8 array of shape (H, W) or (H, W, 3), got {array.dtype} "
                         f"{tuple(array.shape)}")
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def _encoded(image, **options) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, **options)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert(image.mode))


def distort(image: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """``image`` (uint8, H×W or H×W×3) distorted by ``kind`` at ``level`` (1 mildest … 5 strongest)."""
    if kind not in LEVELS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= len(LEVELS[kind]):
        raise ValueError(f"level must be an integer from 1 to {len(LEVELS[kind])}, got {level!r}")
    strength = LEVELS[kind][level - 1]
    if kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = image.astype(np.float64) + rng.normal(0.0, strength, image.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    picture = _image(image)
    if kind == "blur":
        from PIL import ImageFilter

        return np.asarray(picture.filter(ImageFilter.GaussianBlur(radius=strength))).reshape(image.shape)
    if kind == "jpeg":
        return _encoded(picture, format="JPEG", quality=int(strength)).reshape(image.shape)
    return _encoded(picture, format="JPEG2000", quality_mode="rates", quality_layers=[strength]).reshape(image.shape)


def distortion_series(image: np.ndarray, kind: str, seed: int = 0) -> list[np.ndarray]:
    """The reference's five distorted versions of one kind, best quality first: a ranked group."""
    return [distort(image, kind, level, seed=seed + level) for level in range(1, len(LEVELS[kind]) + 1)]

"""On-the-fly augmentation: affine transforms and elastic distortions, batched.

Each image is resampled once, bilinearly, at

    p_src = c + A (p - c) - t + α · (G_σ * U)(p)

where p is an output pixel (row, col), c the image centre, A the inverse of the
rotation·scale·shear map, t the shift, and U a per-pixel displacement field with
components uniform in [-1, 1], smoothed by a Gaussian G_σ (same filter as
``scipy.ndimage.gaussian_filter``, mode "reflect", truncate 4) and scaled by α
(Simard et al. 2003).  Pixels that fall outside the source image read 0
(background).  Every random number comes from ``core.random.keyed_uniform`` keyed
by (seed, epoch, example index), so an example gets the same distortion in any
batch, shard or worker.

Spec strings (CLI ``--augment``, TOML ``augment``), comma-separated, any subset:
``rotate=DEG`` (uniform in ±DEG), ``shift=PX`` (±PX in each axis), ``scale=F``
(factor in [1-F, 1+F]), ``shear=DEG`` (±DEG), ``elastic=ALPHA:SIGMA``, ``flip=P``
(mirror left-right with probability P: for clothing, not for digits).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.random import fold_key, keyed_uniform

_KEYS = ("rotate", "shift", "scale", "shear", "elastic", "flip")
_STREAM_AFFINE, _STREAM_ELASTIC, _STREAM_FLIP = 2001, 2002, 2003
# the largest value of each one-number item: a full turn, shears short of 90 degrees,
# shifts of any image size (checked against the images by ``Augmenter.check_images``)
_LIMITS = {"rotate": 180.0, "shift": 4096.0, "shear": 80.0}


@dataclass(frozen=True)
class AugmentSpec:
    rotate: float = 0.0
    shift: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    flip: float = 0.0

    @property
    def affine(self) -> bool:
        return bool(self.rotate or self.shift or self.scale or self.shear or self.flip)

    @property
    def active(self) -> bool:
        return self.affine or self.elastic_alpha > 0

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in ("rotate", "shift", "scale", "shear")
                 if getattr(self, k)]
        if self.elastic_alpha:
            parts.append(f"elastic={self.elastic_alpha:g}:{self.elastic_sigma:g}")
        if self.flip:
            parts.append(f"flip={self.flip:g}")
        return ",".join(parts) or "none"


def parse_spec(spec: str | None) -> AugmentSpec:
    """Parse ``"rotate=15,shift=2,elastic=34:4"``; "" or "none" means no augmentation."""
    if spec is None or str(spec).strip() in ("", "none"):
        return AugmentSpec()
    vals: dict[str, float] = {}
    for item in str(spec).split(","):
        key, sep, val = item.strip().partition("=")
        if not sep or key not in _KEYS:
            raise ValueError(f"bad augmentation item {item!r} in {spec!r}; expected "
                             "KEY=VALUE with KEY in " + ", ".join(_KEYS))
        try:
            nums = [float(v) for v in val.split(":")]
        except ValueError:
            raise ValueError(f"augmentation {key!r} needs numbers, got {val!r}") from None
        if any(not np.isfinite(n) or n < 0 for n in nums):
            raise ValueError(f"augmentation {key!r} needs finite values >= 0, got {val!r}")
        if key == "elastic":
            if len(nums) > 2 or (len(nums) == 2 and not 0 < nums[1] <= 100):
                raise ValueError(f"elastic takes ALPHA[:SIGMA] with 0 < SIGMA <= 100 "
                                 f"(pixels), got {val!r}")
            if nums[0] > 1000:
                raise ValueError(f"elastic ALPHA is at most 1000 (pixels), got {val!r}")
            vals["elastic_alpha"] = nums[0]
            if len(nums) == 2:
                vals["elastic_sigma"] = nums[1]
        else:
            if len(nums) != 1:
                raise ValueError(f"augmentation {key!r} takes one number, got {val!r}")
            if nums[0] > _LIMITS.get(key, np.inf):
                raise ValueError(f"augmentation {key}={val} is beyond its range (at most "
                                 f"{_LIMITS[key]:g})")
            if key == "scale" and nums[0] >= 1:
                raise ValueError(f"scale=F needs F < 1 (factor in [1-F, 1+F]), got {val!r}")
            if key == "flip" and nums[0] > 1:
                raise ValueError(f"flip=P needs a probability P <= 1, got {val!r}")
            vals[key] = nums[0]
    return AugmentSpec(**vals)


def gaussian_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(n, n) matrix G with (G @ v) = scipy.ndimage.gaussian_filter1d(v, sigma) for
    mode "reflect" (d c b a | a b c d | d c b a)."""
    radius = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    g = np.zeros((n, n))
    for i in range(n):
        for off, w in zip(range(-radius, radius + 1), k):
            j = i + off
            period = 2 * n
            j %= period
            if j >= n:
                j = period - 1 - j
            g[i, j] += w
    return g


def bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``images`` (N, H, W) at float coordinates ``rows``/``cols`` (N, H, W)
    with bilinear interpolation; points outside the image read 0.  float32 out."""
    n, h, w = images.shape
    # A zero border (1 before, 2 after) plus clipping the coordinates to [-1, h] makes
    # every outside point interpolate between zeros, with no separate mask pass.
    pw = w + 3
    padded = np.zeros((n, h + 3, pw), np.float32)
    padded[:, 1:h + 1, 1:w + 1] = images
    rows = np.clip(rows, -1.0, float(h), dtype=np.float32)
    cols = np.clip(cols, -1.0, float(w), dtype=np.float32)
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    rows -= r0
    cols -= c0
    base = (np.arange(n, dtype=np.int32) * ((h + 3) * pw) + pw + 1).reshape(n, 1, 1)
    i00 = r0.astype(np.int32)
    i00 *= pw
    i00 += c0.astype(np.int32)
    i00 += base
    flat = padded.reshape(-1)
    v00 = flat.take(i00)
    v01 = flat.take(i00 + 1)
    i00 += pw
    v10 = flat.take(i00)
    v11 = flat.take(i00 + 1)
    v01 -= v00
    v01 *= cols
    v00 += v01          # top row, interpolated along columns
    v11 -= v10
    v11 *= cols
    v10 += v11          # bottom row
    v10 -= v00
    v10 *= rows
    v00 += v10
    return v00


def warp(images, *, angle=None, shift=None, scale=None, shear=None, displacement=None,
         flip=None, pixel_max: float = 255.0) -> np.ndarray:
    """Resample ``images`` (N, H, W) once under the given per-image transforms.

    angle, shear : (N,) degrees (counter-clockwise as displayed: +90 is np.rot90)
    shift : (N, 2) pixels (down, right);  scale : (N,) factors
    displacement : (N, 2, H, W) extra source offsets (rows, cols), e.g. elastic
    flip : (N,) bool, mirror left-right (applied first, about the centre)
    Returns float32 (N, H, W) divided by ``pixel_max``.
    """
    images = np.asarray(images)
    n, h, w = images.shape
    inv = np.float32(1.0 / pixel_max)
    if angle is None and shift is None and scale is None and shear is None \
            and displacement is None and flip is None:
        return images.astype(np.float32) * inv
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = np.meshgrid(np.arange(h, dtype=np.float32) - np.float32(cy),
                       np.arange(w, dtype=np.float32) - np.float32(cx), indexing="ij")
    if angle is None and scale is None and shear is None:
        rows = np.broadcast_to(y + np.float32(cy), (n, h, w))
        cols = np.broadcast_to(x + np.float32(cx), (n, h, w))
    else:
        def col(v, default):
            v = np.full(n, default) if v is None else np.asarray(v, np.float64)
            return v.astype(np.float32)[:, None, None]

        th, sh = np.deg2rad(col(angle, 0.0)), np.deg2rad(col(shear, 0.0))
        cos, sin, tan, s = np.cos(th), np.sin(th), np.tan(sh), col(scale, 1.0)
        # inverse map: undo scale, rotation (+θ counter-clockwise on screen), then shear
        xr = (cos * x - sin * y) / s
        yr = (sin * x + cos * y) / s
        rows = yr + np.float32(cy)
        cols = xr - tan * yr + np.float32(cx)
    if shift is not None:
        t = np.asarray(shift, np.float32)
        rows = rows - t[:, 0, None, None]
        cols = cols - t[:, 1, None, None]
    if displacement is not None:
        rows = rows + displacement[:, 0]
        cols = cols + displacement[:, 1]
    if flip is not None:   # mirror the source first: read column c of the mirror image
        f = np.asarray(flip, bool)[:, None, None]
        cols = np.where(f, np.float32(2 * cx) - cols, cols)
    out = bilinear(images, rows, cols)
    out *= inv
    return out


class Augmenter:
    """Batched, deterministic augmentation.

    >>> aug = Augmenter("rotate=15,shift=2,elastic=34:4", seed=0)
    >>> out = aug(images, indices, epoch)   # uint8 (N, H, W) -> float32 (N, H, W) in [0, 1]
    """

    def __init__(self, spec: str | AugmentSpec | None = None, seed: int = 0,
                 pixel_max: float = 255.0):
        self.spec = spec if isinstance(spec, AugmentSpec) else parse_spec(spec)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed, self.pixel_max = int(seed), float(pixel_max)
        self._gauss: dict[tuple[int, float], np.ndarray] = {}

    def _smooth(self, field: np.ndarray) -> np.ndarray:
        """Gaussian-smooth (N, 2, H, W) fields as G_h @ F @ G_w^T (separable).

        Stacked per-image products, not one big GEMM: a big GEMM's rounding depends on
        how the batch is tiled, and an example's distortion must not depend on its batch.
        """
        n, k, h, w = field.shape
        sig = self.spec.elastic_sigma
        return np.matmul(np.matmul(self._gaussian(h, sig), field), self._gaussian(w, sig).T)

    def _gaussian(self, n: int, sigma: float) -> np.ndarray:
        """G_σ for a side of n pixels, built once per (n, σ) and kept."""
        if (n, sigma) not in self._gauss:
            self._gauss[n, sigma] = gaussian_matrix(n, sigma).astype(np.float32)
        return self._gauss[n, sigma]

    def check_images(self, shape) -> None:
        """Refuse a spec that would move every pixel of a (H, W) image out of it."""
        if self.spec.shift >= min(shape):
            raise ValueError(f"augmentation shift={self.spec.shift:g} moves the whole "
                             f"{shape[0]}x{shape[1]} image out of view; use fewer pixels "
                             f"than {min(shape)}")

    def params(self, indices: np.ndarray, epoch: int, shape: tuple[int, int]) -> dict:
        """The per-example transform parameters for ``warp``."""
        sp, idx = self.spec, np.asarray(indices, np.int64)
        out: dict = {}
        if sp.affine:
            u = keyed_uniform(fold_key(self.seed, _STREAM_AFFINE, epoch), idx, 5, np.float64)
            u = 2.0 * u - 1.0
            if sp.rotate:
                out["angle"] = sp.rotate * u[:, 0]
            if sp.shift:
                out["shift"] = sp.shift * u[:, 1:3]
            if sp.scale:
                out["scale"] = 1.0 + sp.scale * u[:, 3]
            if sp.shear:
                out["shear"] = sp.shear * u[:, 4]
        if sp.flip:
            f = keyed_uniform(fold_key(self.seed, _STREAM_FLIP, epoch), idx, 1, np.float64)
            out["flip"] = f[:, 0] < sp.flip
        if sp.elastic_alpha:
            h, w = shape
            key = fold_key(self.seed, _STREAM_ELASTIC, epoch)
            u = keyed_uniform(key, idx, 2 * h * w, np.float32, -sp.elastic_alpha,
                              sp.elastic_alpha)
            # smoothing is linear, so scaling by alpha first is the same as after
            out["displacement"] = self._smooth(u.reshape(-1, 2, h, w))
        return out

    def __call__(self, images: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 3:
            raise ValueError(f"augmentation needs images (N, H, W), got shape {images.shape}")
        if len(indices) != len(images):
            raise ValueError(f"{len(indices)} indices for {len(images)} images")
        if not self.spec.active:
            return images.astype(np.float32) * np.float32(1.0 / self.pixel_max)
        return warp(images, **self.params(indices, epoch, images.shape[1:]),
                    pixel_max=self.pixel_max)

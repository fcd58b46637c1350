"""Synthetic data for demos and tests: chest-radiograph-like images per class, and images that are not X-rays.

Everything is drawn from a caller's :class:`numpy.random.Generator`, so a seed reproduces every pixel. The
chest images are cartoons, not medicine: they exist so pipelines can be trained and tested end to end without
real data, and a model trained on them is a demo model only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import cast

import numpy as np
from scipy import ndimage

from care_companion.data.synthetic_common import (
    band,
    child,
    develop,
    draw_letter,
    ellipse,
    grid,
    reposition,
    save_png,
    smooth_noise,
    soft,
    to_u8,
)
from care_companion.parallel import parallel_map

CHEST_LABELS = ("normal", "pneumonia", "tuberculosis")
UNKNOWN_LABEL = "unknown"

# scikit-image sample images shipped inside the installed package (checked to load with no network and no
# pooch); the others in skimage.data are fetched from the internet on first use and must not be used.
OFFLINE_SAMPLES = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "shepp_logan_phantom",
    "stereo_motorcycle",
    "text",
)


# ------------------------------------------------------------------------------------------- chest films


@dataclass(frozen=True)
class _Anatomy:
    """One synthetic patient's body habitus and density levels (coordinates as fractions of the image)."""

    cx: float
    body_top: float
    body_half_w: float
    lung_cy: float
    lung_dx: float
    lung_a: float
    lung_b: float
    right_scale: float
    heart_dx: float
    heart_a: float
    heart_b: float
    heart_dy: float
    mediastinum_half_w: float
    rib_spacing: float
    rib_half: float
    clavicle_y: float
    tissue: float
    air: float
    bone: float
    detail_seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Anatomy:
        """A random but plausible habitus."""
        return cls(
            cx=0.5 + rng.normal(0.0, 0.012),
            body_top=rng.uniform(0.06, 0.14),
            body_half_w=rng.uniform(0.37, 0.46),
            lung_cy=rng.uniform(0.41, 0.47),
            lung_dx=rng.uniform(0.16, 0.2),
            lung_a=rng.uniform(0.115, 0.145),
            lung_b=rng.uniform(0.24, 0.3),
            right_scale=rng.uniform(1.0, 1.08),
            heart_dx=rng.uniform(0.02, 0.07),
            heart_a=rng.uniform(0.13, 0.17),
            heart_b=rng.uniform(0.1, 0.14),
            heart_dy=rng.uniform(0.5, 0.65),
            mediastinum_half_w=rng.uniform(0.045, 0.065),
            rib_spacing=rng.uniform(0.05, 0.064),
            rib_half=rng.uniform(0.005, 0.008),
            clavicle_y=rng.uniform(0.17, 0.22),
            tissue=rng.uniform(0.5, 0.62),
            air=rng.uniform(0.3, 0.4),
            bone=rng.uniform(0.08, 0.14),
            detail_seed=int(rng.integers(0, 2**63 - 1)),
        )

    def lung_centre(self, side: int) -> tuple[float, float, float, float]:
        """(cy, cx, half-height, half-width) of the lung on ``side`` (-1: image left = patient's right)."""
        scale = self.right_scale if side < 0 else 1.0
        return self.lung_cy, self.cx + side * self.lung_dx, self.lung_b * scale, self.lung_a * scale


def _lung_mask(Y: np.ndarray, X: np.ndarray, anat: _Anatomy, side: int) -> np.ndarray:
    """Soft lung field: an ellipse narrowed towards the apex."""
    cy, cx, b, a = anat.lung_centre(side)
    v = (Y - cy) / b
    taper = 0.5 + 0.5 * np.clip((v + 1.0) / 1.2, 0.0, 1.0)
    u = (X - cx) / (a * taper)
    return soft(1.0 - np.sqrt(u**2 + v**2), 18.0)


def _ribs(Y: np.ndarray, X: np.ndarray, anat: _Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    """Posterior ribs (bright arcs, concave down) and fainter anterior ribs over one hemithorax."""
    cy, _, b, a = anat.lung_centre(side)
    inner, width = anat.cx + side * 0.03, anat.lung_dx + a + 0.04
    t = np.clip(side * (X - inner) / width, -0.05, 1.05)
    fade = soft(t, 40.0) * soft(1.0 - t, 30.0)
    cage = ellipse(Y, X, cy + 0.02, anat.cx, b + 0.07, anat.lung_dx + a + 0.05, 12.0)
    top, count = cy - b - 0.04, int((2 * b + 0.08) / anat.rib_spacing) + 1
    out = np.zeros_like(Y)
    for curve, weight, half in (
        (-0.04 * t + rng.uniform(0.12, 0.18) * t**2, 1.0, anat.rib_half),  # posterior: out from the spine, then down
        (0.035 + rng.uniform(0.08, 0.12) * (1.0 - t) ** 2, 0.4, anat.rib_half * 0.8),  # anterior: down to the middle
    ):
        phase = (Y - top - curve) / anat.rib_spacing
        nearest = np.clip(np.rint(phase), 0, count - 1)
        out += weight * np.exp(-0.5 * ((phase - nearest) * anat.rib_spacing / half) ** 2)
    return np.clip(out, 0.0, 1.2) * fade * cage


def _vessels(size: int, anat: _Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    """Bronchovascular markings: branching lines radiating from the hilum, thinning and fading outwards."""
    from skimage.draw import line_aa

    cy, cx, b, a = anat.lung_centre(side)
    canvas = np.zeros((size, size))

    def draw(p0: tuple[float, float], p1: tuple[float, float], weight: float) -> None:
        rr, cc, val = line_aa(*(round(float(v) * (size - 1)) for v in (*p0, *p1)))
        keep = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        np.maximum.at(canvas, (rr[keep], cc[keep]), weight * val[keep])

    hilum = (cy - 0.02, cx - side * a * 0.55)
    for _ in range(int(rng.integers(8, 14))):
        angle, length = rng.uniform(-2.6, 2.6), rng.uniform(0.08, 0.2)
        end = (hilum[0] + np.cos(angle) * length * b / 0.27, hilum[1] + side * abs(np.sin(angle)) * length)
        weight = rng.uniform(0.5, 1.0)
        draw(hilum, end, weight)
        mid = ((hilum[0] + end[0]) / 2, (hilum[1] + end[1]) / 2)
        twig = (mid[0] + rng.normal(0, 0.04), mid[1] + side * abs(rng.normal(0, 0.05)))
        draw(mid, twig, 0.6 * weight)
    return ndimage.gaussian_filter(canvas, 0.6 * size / 256)


def _pneumonia(
    Y: np.ndarray, X: np.ndarray, anat: _Anatomy, lungs: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Patchy consolidation in the lower zone of one or both lungs."""
    size = Y.shape[0]
    sides = [-1, 1] if rng.random() < 0.35 else [int(rng.choice([-1, 1]))]
    out = np.zeros_like(Y)
    for side in sides:
        cy, cx, b, a = anat.lung_centre(side)
        py, px = cy + b * rng.uniform(0.3, 0.65), cx + side * a * rng.uniform(-0.1, 0.55)
        radius = rng.uniform(0.08, 0.15)
        envelope = np.exp(-0.5 * (((Y - py) ** 2 + (X - px) ** 2) / radius**2))
        patches = np.clip((smooth_noise(rng, size, size / 64 * rng.uniform(2.0, 4.0)) - 0.35) / 0.35, 0.0, 1.0)
        strength = rng.uniform(0.3, 0.55)
        out += strength * envelope * (0.4 + 0.6 * patches) * lungs[0 if side < 0 else 1]
    return out


def _tuberculosis(
    Y: np.ndarray, X: np.ndarray, anat: _Anatomy, lungs: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Upper-zone nodules and/or a thick-walled cavity, with a faint surrounding infiltrate."""
    sides = [-1, 1] if rng.random() < 0.3 else [int(rng.choice([-1, 1]))]
    kind = rng.choice(["nodules", "cavity", "both"], p=[0.45, 0.25, 0.3])
    out = np.zeros_like(Y)
    for k, side in enumerate(sides):
        lung = lungs[0 if side < 0 else 1]
        cy, cx, b, a = anat.lung_centre(side)
        py, px = cy - b * rng.uniform(0.45, 0.72), cx + side * a * rng.uniform(-0.25, 0.35)
        lesion = 0.06 * np.exp(-0.5 * (((Y - py) ** 2 + (X - px) ** 2) / 0.05**2))
        if kind in ("nodules", "both") or k > 0:
            for _ in range(int(rng.integers(4, 12))):
                ny, nx = py + rng.normal(0.0, 0.03), px + rng.normal(0.0, 0.035)
                r = rng.uniform(0.006, 0.013)
                lesion += rng.uniform(0.18, 0.35) * np.exp(-0.5 * (((Y - ny) ** 2 + (X - nx) ** 2) / r**2))
        if kind in ("cavity", "both") and k == 0:
            radius, rim = rng.uniform(0.025, 0.042), rng.uniform(0.006, 0.011)
            dist = np.sqrt((Y - py) ** 2 + (X - px) ** 2)
            lesion += rng.uniform(0.22, 0.35) * np.exp(-0.5 * ((dist - radius) / rim) ** 2)
            lesion -= 0.05 * soft(radius - dist, 300.0)
        out += lesion * lung
    return out


def _chest_density(label: str, anat: _Anatomy, disease_rng: np.random.Generator, size: int) -> np.ndarray:
    """Attenuation-like map in roughly [0, 1] before positioning and exposure."""
    Y, X = grid(size)
    anat_rng = np.random.default_rng(anat.detail_seed)  # fine detail (texture, vessels, rib shape) of the patient
    torso_u, torso_v = (X - anat.cx) / anat.body_half_w, (Y - 0.66) / (0.66 - anat.body_top)
    body = soft(1.0 - (np.abs(torso_u) ** 2.6 + np.abs(torso_v) ** 2.6), 6.0)
    neck = soft(0.075 - np.abs(X - anat.cx), 120.0) * soft(Y - 0.01, 60.0)
    body = np.maximum(body, neck)
    lungs = [_lung_mask(Y, X, anat, side) for side in (-1, 1)]
    heart_cy = anat.lung_cy + anat.lung_b * anat.heart_dy
    heart = ellipse(Y, X, heart_cy, anat.cx + anat.heart_dx, anat.heart_b, anat.heart_a)
    mediastinum = soft(anat.mediastinum_half_w - np.abs(X - anat.cx), 80.0) * soft(anat.lung_cy + anat.lung_b - Y, 30.0)
    soft_tissue = np.clip(heart + mediastinum, 0.0, 1.0)
    air = np.clip(lungs[0] + lungs[1], 0.0, 1.0) * (1.0 - soft_tissue)

    density = anat.tissue * body + 0.07 * soft_tissue * body - anat.air * air
    density += 0.05 * air * (smooth_noise(anat_rng, size, size / 128) - 0.5)
    for side in (-1, 1):
        density += 0.08 * air * _vessels(size, anat, side, anat_rng)
    spine_band = soft(0.03 - np.abs(X - anat.cx), 150.0)
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * Y / anat.rib_spacing)
    density += anat.bone * spine_band * vertebrae * body * (0.5 + 0.5 * soft_tissue)
    for side in (-1, 1):
        density += anat.bone * 0.9 * _ribs(Y, X, anat, side, anat_rng) * body * (1.0 - 0.7 * soft_tissue)
    for side in (-1, 1):
        t = np.clip(side * (X - anat.cx - side * 0.04) / 0.27, 0.0, 1.0)
        curve = anat.clavicle_y - 0.045 * t + 0.025 * np.sin(np.pi * t)
        reach = soft(side * (X - anat.cx) - 0.035, 200.0) * soft(0.33 - side * (X - anat.cx), 200.0)
        density += anat.bone * 1.3 * band(Y, curve, 0.009) * reach * body
    fields = [lung * (1.0 - soft_tissue) for lung in lungs]  # aerated lung, where disease shows
    if label == "pneumonia":
        density += _pneumonia(Y, X, anat, fields, disease_rng)
    elif label == "tuberculosis":
        density += _tuberculosis(Y, X, anat, fields, disease_rng)
    return density


def _expose(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patient positioning, exposure (brightness, contrast, gamma, heel effect), blur, noise and a side marker."""
    size = density.shape[0]
    image = develop(reposition(density, rng), rng)
    if rng.random() < 0.5:  # a lead "L" marker in a top corner
        r0 = int(size * rng.uniform(0.03, 0.1))
        c0 = int(size * rng.uniform(0.04, 0.1)) if rng.random() < 0.5 else int(size * rng.uniform(0.86, 0.92))
        draw_letter(image, "L", r0, c0, int(size * 0.06), int(size * 0.04), 0.95)
    return image


def _render_chest(
    label: str, anat: _Anatomy, disease_rng: np.random.Generator, view_rng: np.random.Generator, size: int
) -> np.ndarray:
    """One film of a given patient: anatomy and disease pattern fixed, positioning and exposure per film."""
    if label not in CHEST_LABELS:
        raise ValueError(f"unknown chest label {label!r}; expected one of {', '.join(CHEST_LABELS)}")
    return to_u8(_expose(_chest_density(label, anat, disease_rng, size), view_rng))


def synth_chest(label: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A synthetic frontal chest radiograph (``uint8``, size x size) showing the signs of ``label``.

    Lungs, heart, spine, clavicles and ribs vary in shape and position; exposure, gamma and noise vary so much
    that the global brightness says nothing about the class. Pneumonia adds patchy consolidation in a lower
    lung zone (one or both sides); tuberculosis adds upper-zone nodules and/or a ring-shaped cavity. The same
    generator state gives the same anatomy and exposure for every label, so labels can be compared in pairs.

    Args:
        label: "normal", "pneumonia" or "tuberculosis".
        rng: source of all randomness.
        size: side of the square image in pixels.

    Raises:
        ValueError: for any other label.
    """
    if label not in CHEST_LABELS:
        raise ValueError(f"unknown chest label {label!r}; expected one of {', '.join(CHEST_LABELS)}")
    anat_rng, disease_rng, view_rng = child(rng), child(rng), child(rng)
    return _render_chest(label, _Anatomy.draw(anat_rng), disease_rng, view_rng, size)


def synth_chest_lesion(label: str, seed: int, size: int = 256, *, share: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic film showing ``label`` and where its lesion lies: the pixels that differ from the same
    patient's normal film (same anatomy, positioning and exposure) by more than ``share`` of the largest
    difference; what a localisation check (the pointing game) scores a heat map against.

    Returns:
        The film (``uint8``, size x size) and the lesion mask (``bool``, same shape).

    Raises:
        ValueError: ``label`` is not a disease of :data:`CHEST_LABELS`.
    """
    if label not in CHEST_LABELS[1:]:
        raise ValueError(f"no lesion for {label!r}; expected one of {', '.join(CHEST_LABELS[1:])}")
    film = synth_chest(label, np.random.default_rng(seed), size)
    normal = synth_chest("normal", np.random.default_rng(seed), size)
    difference = np.abs(film.astype(np.float64) - normal)
    return film, difference > share * difference.max()


# ------------------------------------------------------------------------------------------ non-X-rays


def _document(rng: np.random.Generator, size: int) -> np.ndarray:
    """A page or screenshot: light background, lines of word-like dark blocks, maybe panels and a title."""
    image = np.full((size, size), rng.uniform(0.8, 1.0))
    if rng.random() < 0.5:  # screenshot-like panels and a title bar
        for _ in range(int(rng.integers(2, 6))):
            r0, c0 = rng.integers(0, size - 16, size=2)
            r1, c1 = r0 + rng.integers(12, size // 2), c0 + rng.integers(12, size // 2)
            image[r0:r1, c0:c1] = rng.uniform(0.2, 0.95)
        image[: int(size * rng.uniform(0.04, 0.1))] = rng.uniform(0.1, 0.6)
    line_h = int(rng.integers(3, 8))
    pitch = line_h + int(rng.integers(3, 10))
    margin = int(rng.integers(4, size // 8))
    ink = rng.uniform(0.0, 0.35)
    for row in range(margin, size - margin - line_h, pitch):
        col = margin + (int(rng.integers(0, 20)) if rng.random() < 0.2 else 0)
        end = size - margin - int(rng.integers(0, size // 3))
        while col < end:
            word = int(rng.integers(4, 36))
            glyphs = rng.random(word) < 0.75  # gaps between letters
            segment = image[row : row + line_h, col : min(col + word, end)]
            segment[:, glyphs[: segment.shape[1]]] = ink
            col += word + int(rng.integers(3, 8))
    return image


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient background with random discs, rectangles and rings (a flattened colourful scene)."""
    Y, X = grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    image = rng.uniform(0.0, 0.6) + rng.uniform(0.2, 0.6) * (np.cos(angle) * X + np.sin(angle) * Y)
    for _ in range(int(rng.integers(3, 15))):
        cy, cx = rng.uniform(0, 1, size=2)
        r = rng.uniform(0.03, 0.25)
        level = rng.uniform(0.0, 1.0)
        kind = rng.integers(0, 3)
        if kind == 0:
            mask = (Y - cy) ** 2 + (X - cx) ** 2 < r**2
        elif kind == 1:
            mask = (np.abs(Y - cy) < r * rng.uniform(0.3, 1.0)) & (np.abs(X - cx) < r)
        else:
            mask = np.abs(np.sqrt((Y - cy) ** 2 + (X - cx) ** 2) - r) < r * 0.2
        image = np.where(mask, level, image)
    return image


def _pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """A checkerboard or stripes, rotated, with a random period and contrast."""
    Y, X = grid(size)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * X + np.sin(angle) * Y
    v = -np.sin(angle) * X + np.cos(angle) * Y
    period = rng.uniform(0.03, 0.25)
    if rng.random() < 0.5:
        pattern = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(float)
    else:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    low, high = np.sort(rng.uniform(0, 1, size=2))
    return low + (high - low) * pattern


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Noise textures: clouds, blobs or grain at a random scale."""
    field = smooth_noise(rng, size, rng.uniform(1.0, 20.0) * size / 256)
    choice = rng.integers(0, 3)
    if choice == 0:
        return field
    if choice == 1:
        return (field > rng.uniform(0.35, 0.65)).astype(float) * rng.uniform(0.5, 1.0)
    return 0.5 * field + 0.5 * rng.random((size, size))


def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A landscape-like picture: sky gradient, horizon, sun, blobby trees."""
    Y, X = grid(size)
    horizon = rng.uniform(0.35, 0.7) + 0.05 * np.sin(2 * np.pi * X * rng.uniform(0.5, 2.0) + rng.uniform(0, 6))
    sky = rng.uniform(0.6, 0.95) - rng.uniform(0.0, 0.3) * Y
    ground = rng.uniform(0.15, 0.5) + 0.15 * smooth_noise(rng, size, 3.0 * size / 256)
    image = np.where(horizon > Y, sky, ground)
    sun_y, sun_x = rng.uniform(0.05, 0.3), rng.uniform(0.1, 0.9)
    image = np.where((Y - sun_y) ** 2 + (X - sun_x) ** 2 < rng.uniform(0.03, 0.08) ** 2, 1.0, image)
    for _ in range(int(rng.integers(0, 8))):
        tx, ty, r = rng.uniform(0, 1), rng.uniform(0.3, 0.8), rng.uniform(0.03, 0.1)
        image = np.where((Y - ty) ** 2 + ((X - tx) * 1.4) ** 2 < r**2, rng.uniform(0.05, 0.35), image)
    return image


_GENERATORS = (_document, _shapes, _pattern, _texture, _scene)


def synth_non_radiograph(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A grayscale ``uint8`` image that is clearly not a radiograph: document, screenshot, shapes, pattern, scene.

    Args:
        rng: source of all randomness.
        size: side of the square image in pixels.
    """
    maker = _GENERATORS[int(rng.integers(0, len(_GENERATORS)))]
    image = maker(rng, size)
    if rng.random() < 0.5:
        image = image + rng.normal(0.0, rng.uniform(0.005, 0.05), size=image.shape)
    return to_u8(image)


@cache
def _sample_image(name: str) -> np.ndarray:
    """A bundled scikit-image sample as 2-D ``uint8`` grayscale (cached per process, loaded on first use)."""
    from skimage import data, util
    from skimage.color import rgb2gray, rgba2rgb

    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo pair: take the left view
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image)
    if image.ndim == 3:
        image = rgb2gray(image)
    gray = util.img_as_float(image)
    gray = (gray - gray.min()) / max(float(gray.max() - gray.min()), 1e-12)
    return to_u8(gray)


def _augment(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Random crop, flips, rotation, gamma and contrast, resized to size x size."""
    from PIL import Image

    h, w = image.shape
    ch, cw = max(8, int(h * rng.uniform(0.45, 1.0))), max(8, int(w * rng.uniform(0.45, 1.0)))
    r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = image[r0 : r0 + ch, c0 : c0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.2:
        crop = crop[::-1]
    crop = np.rot90(crop, int(rng.integers(0, 4)))
    pil = Image.fromarray(np.ascontiguousarray(crop))
    if rng.random() < 0.4:
        pil = pil.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(pil.resize((size, size), resample=Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    pixels = pixels ** rng.uniform(0.6, 1.6)
    pixels = (pixels - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.1, 0.1)
    return to_u8(pixels)


def natural_images(rng: np.random.Generator, n: int, size: int = 256) -> list[np.ndarray]:
    """``n`` augmented grayscale photographs made from scikit-image's bundled samples (no network needed).

    Args:
        rng: source of all randomness (choice of photo and augmentation).
        n: how many images; may exceed the number of bundled photos.
        size: side of each square ``uint8`` image.
    """
    names = rng.choice(len(OFFLINE_SAMPLES), size=n)
    return [_augment(_sample_image(OFFLINE_SAMPLES[int(i)]), rng, size) for i in names]


def make_unknown_images(rng: np.random.Generator, n: int, size: int = 256) -> list[np.ndarray]:
    """``n`` images for the "not a chest X-ray" class: about half photos, half synthetic non-radiographs, shuffled.

    Args:
        rng: source of all randomness.
        n: how many images.
        size: side of each square ``uint8`` image.
    """
    n_photos = n // 2 + int(rng.integers(0, 2)) * (n % 2)
    images = natural_images(rng, n_photos, size) + [synth_non_radiograph(rng, size) for _ in range(n - n_photos)]
    return [images[int(i)] for i in rng.permutation(len(images))]


# ----------------------------------------------------------------------------------------------- tree


@dataclass(frozen=True)
class _PatientFilms:
    """One synthetic patient's films to render: everything random already drawn, so any process renders the
    same bytes."""

    root: Path
    label: str
    patient: int
    size: int
    unknown_rng: np.random.Generator | None = None
    anatomy_rng: np.random.Generator | None = None
    disease_seed: int = 0
    film_rngs: tuple[np.random.Generator, ...] = ()
    films: int = 0


def _write_patient(plan: _PatientFilms) -> int:
    """Render and write one patient's films; how many."""
    if plan.unknown_rng is not None:
        images = make_unknown_images(plan.unknown_rng, plan.films, plan.size)
    else:
        anat = _Anatomy.draw(cast(np.random.Generator, plan.anatomy_rng))
        images = [
            _render_chest(plan.label, anat, np.random.default_rng(plan.disease_seed), film_rng, plan.size)
            for film_rng in plan.film_rngs
        ]
    for k, image in enumerate(images, start=1):
        save_png(image, Path(plan.root) / plan.label / f"synth-patient{plan.patient:04d}_img{k}.png")
    return len(images)


def write_synthetic_chest_tree(
    root: Path, n_per_class: int, *, seed: int, size: int = 256, include_unknown: bool = True, workers: int = 1
) -> dict[str, int]:
    """Write a class-folder tree ``root/<class>/synth-patient{P:04d}_img{K}.png`` of synthetic images.

    Each synthetic patient has 1-3 films of one class (same anatomy and disease, different positioning and
    exposure), so patient-grouped splitting can be tested; patient numbers are unique across classes.

    Args:
        root: folder to write into (created if missing).
        n_per_class: images per class.
        seed: seed of everything drawn; the same seed writes the same bytes, whatever ``workers``.
        size: side of each square image.
        include_unknown: also write an "unknown" class of non-radiographs.
        workers: rendering processes.

    Returns:
        Number of images written per class.
    """
    rng = np.random.default_rng(seed)
    plans: list[_PatientFilms] = []
    patient = 0
    for label in (*CHEST_LABELS, *((UNKNOWN_LABEL,) if include_unknown else ())):
        written = 0
        while written < n_per_class:
            patient += 1
            films = min(int(rng.integers(1, 4)), n_per_class - written)
            common = {"root": Path(root), "label": label, "patient": patient, "size": size, "films": films}
            if label == UNKNOWN_LABEL:
                plans.append(_PatientFilms(**common, unknown_rng=child(rng)))
            else:
                anatomy_rng, disease_seed = child(rng), int(rng.integers(0, 2**63 - 1))
                film_rngs = tuple(child(rng) for _ in range(films))
                plans.append(
                    _PatientFilms(**common, anatomy_rng=anatomy_rng, disease_seed=disease_seed, film_rngs=film_rngs)
                )
            written += films
    counts: dict[str, int] = {}
    done = (
        parallel_map(_write_patient, plans, workers=workers, description=f"generating {patient} patients' films")
        if workers > 1
        else map(_write_patient, plans)
    )
    for plan, n in zip(plans, done, strict=True):
        counts[plan.label] = counts.get(plan.label, 0) + n
    return counts

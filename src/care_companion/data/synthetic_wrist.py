"""Synthetic two-view wrist studies (PA and lateral), normal or with a distal forearm fracture.

Bones are projected solids: the radius, ulna and metacarpals are hollow tubes (bright cortex, fainter textured
medulla, a flared distal radius with its radial inclination in PA and volar tilt in lateral), the carpals are
hollow ellipsoids that overlap in the lateral view. Children's growth plates, a plaster cast or splint (in both
classes, so it is no shortcut), collimation, exposure, positioning and an L/R marker vary. Fractures are
cortical breaks of the distal radius (a lucent line, step-off, impaction, dorsal angulation in lateral), torus
(buckle) bulges of the cortex and ulnar styloid fractures; each shows in one view or both, obvious or subtle.

Everything is drawn from a caller's :class:`numpy.random.Generator`: a seed reproduces every pixel, and the
same seed gives the same patient, positioning and exposure with or without the fracture. The images are
cartoons for demos and tests, not medicine. :func:`write_wrist_studies` writes them in the GRAZPEDWRI-DX
layout (PNG files named by GRAZ file stems and a ``dataset.csv``), so they import like the real data set.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from care_companion.data.synthetic_common import (
    child,
    develop,
    draw_letter,
    reposition,
    save_png,
    smooth_noise,
    soft,
    to_u8,
)
from care_companion.parallel import parallel_map

WRIST_VIEWS = ("pa", "lateral")
PROJECTION = {"pa": 1, "lateral": 2}  # GRAZPEDWRI-DX projection codes
GRAZ_COLUMNS = (
    "filestem",
    "patient_id",
    "study_number",
    "timehash",
    "gender",
    "age",
    "laterality",
    "projection",
    "initial_exam",
    "ao_classification",
    "cast",
    "diagnosis_uncertain",
    "osteopenia",
    "fracture_visible",
    "metal",
    "pixel_spacing",
    "device_manufacturer",
)
DEFAULT_VISIBILITY: Mapping[tuple[str, ...], float] = {("pa", "lateral"): 0.6, ("pa",): 0.25, ("lateral",): 0.15}

_CORTEX, _MEDULLA, _SOFT, _CAST = 20.0, 3.0, 0.9, 6.0  # attenuation per unit path length (image widths)
_FRACTURE_KINDS = ("complete", "buckle", "styloid")
_FRACTURE_KIND_P = (0.55, 0.33, 0.12)
_AO = {"complete": "23r-M/3.1", "buckle": "23r-M/2.1", "styloid": "23u-E/7"}

# Carpals in the canonical right wrist, relative to the radiocarpal joint centre (units of the patient's scale):
# name: (dy, dx, half-axis a, half-axis b, angle of the a axis in degrees, age it ossifies).
_CARPALS = {
    "pa": {
        "scaphoid": (-0.084, -0.088, 0.07, 0.034, -50.0, 5.5),
        "lunate": (-0.05, -0.012, 0.042, 0.038, 0.0, 4.0),
        "triquetrum": (-0.06, 0.058, 0.036, 0.03, 30.0, 3.0),
        "pisiform": (-0.05, 0.074, 0.022, 0.02, 0.0, 10.0),
        "trapezium": (-0.14, -0.12, 0.038, 0.032, 20.0, 5.5),
        "trapezoid": (-0.15, -0.065, 0.03, 0.028, 0.0, 6.0),
        "capitate": (-0.15, -0.008, 0.034, 0.062, 0.0, 0.3),
        "hamate": (-0.14, 0.058, 0.034, 0.05, -15.0, 0.5),
    },
    "lateral": {
        "scaphoid": (-0.075, -0.03, 0.07, 0.03, -50.0, 5.5),
        "lunate": (-0.05, 0.0, 0.042, 0.036, 0.0, 4.0),
        "triquetrum": (-0.06, 0.025, 0.035, 0.03, 10.0, 3.0),
        "pisiform": (-0.045, -0.058, 0.022, 0.02, 0.0, 10.0),
        "trapezium": (-0.14, -0.052, 0.034, 0.03, 30.0, 5.5),
        "trapezoid": (-0.145, -0.02, 0.028, 0.026, 0.0, 6.0),
        "capitate": (-0.13, 0.004, 0.032, 0.06, 0.0, 0.3),
        "hamate": (-0.13, 0.022, 0.03, 0.05, 0.0, 0.5),
    },
}
# Outline of forearm and hand: (forearm half-width, hand half-width, hand centre shift, thumb (dy, dx, angle)).
_LIMB = {
    "pa": (0.2, 0.24, 0.0, (-0.16, -0.148, -30.0)),
    "lateral": (0.14, 0.13, -0.015, (-0.16, -0.062, -38.0)),
}
# Metacarpals: (base dy, base dx, angle from vertical in degrees, length, shaft half-width).
_METACARPALS = {
    "pa": (
        (-0.18, -0.148, -30.0, 0.2, 0.027),
        (-0.2, -0.068, -5.0, 0.36, 0.025),
        (-0.215, -0.008, 0.0, 0.35, 0.026),
        (-0.2, 0.05, 6.0, 0.32, 0.023),
        (-0.188, 0.094, 13.0, 0.29, 0.022),
    ),
    "lateral": (
        (-0.17, -0.062, -38.0, 0.2, 0.027),
        (-0.2, -0.012, -3.0, 0.36, 0.025),
        (-0.205, 0.0, 0.0, 0.35, 0.026),
        (-0.2, 0.01, 2.0, 0.32, 0.024),
        (-0.195, 0.02, 4.0, 0.29, 0.023),
    ),
}


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class WristStudy:
    """One synthetic wrist study.

    Attributes:
        views: view name ("pa", "lateral") to a ``uint8`` H x W grayscale image; one or both views.
        label: "normal" or "fracture".
        fracture_views: the views in which the fracture can be seen (empty for normal studies).
        laterality: "L" or "R".
        age: patient age in years (one decimal).
        sex: "M" or "F".
        cast: whether a cast or splint is on the film.
        ao_classification: AO paediatric code of the fracture ("" when normal), e.g. "23r-M/3.1; 23u-E/7".
    """

    views: dict[str, np.ndarray]
    label: str
    fracture_views: tuple[str, ...]
    laterality: str
    age: float = 12.0
    sex: str = "M"
    cast: bool = False
    ao_classification: str = ""


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Break:
    """A break of one long bone, in the bone's frame (u along the axis from its proximal end, v across it)."""

    at: float  # distance of the fracture line from the distal end
    slope: float  # du/dv of the line (obliquity)
    depth: float  # darkness of the lucent line, 0..1
    width: float  # half-width of the lucent line
    extent: float  # share of the bone width the line crosses from cortex ``side`` (1: complete)
    side: int
    rotation: float  # radians; the distal fragment turns about the line's centre, positive towards +v
    shift: tuple[float, float]  # (du, dv) of the distal fragment; du < 0 impacts it


@dataclass(frozen=True)
class _Bulge:
    """A torus (buckle) bulge of the cortex: ``side`` -1/+1 for one cortex, 0 for both."""

    at: float
    amp: float
    length: float
    side: int


@dataclass(frozen=True)
class _LongBone:
    """A tubular bone seen from the side: a hollow round section whose width and cortex vary along the axis."""

    origin: tuple[float, float]  # (y, x) of the proximal end of the axis
    angle: float  # radians from straight up, positive towards +x
    length: float
    radius: float  # shaft half-width
    head: float  # half-width at the distal end
    flare: float  # length over which the distal end widens (and the base narrows)
    offset: float = 0.0  # shift of the centre line at the distal end, along v
    base: float = 0.0  # extra half-width at the proximal end
    cortex: float = 0.01
    thin: float = 0.004  # cortex at the distal end
    tilt: float = 0.0  # du/dv of the distal articular surface
    cup: float = 0.0  # depth of the distal surface at the edges, in head widths (> 0 concave, < 0 dome)
    plate: float = 0.15  # brightness of the subchondral plate under the distal surface
    physis: float | None = None  # depth of an open growth plate below the distal surface


@dataclass(frozen=True)
class _Patient:
    """One synthetic patient's wrist: size, shape, density and age (coordinates as fractions of the image)."""

    age: float
    sex: str
    scale: float
    joint_y: float
    centre_x: float
    radius_shaft: float
    radius_head: float
    inclination: float
    volar_tilt: float
    ulnar_variance: float
    cortex: float
    density: float
    soft: float
    physis: float | None
    sprain: float  # soft-tissue swelling of an injury without fracture (0 for most)
    detail_seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Patient:
        """A random but plausible child's or adolescent's wrist."""
        age = round(float(np.clip(rng.normal(11.8, 3.3), 3.0, 18.9)), 1)
        sex = "M" if rng.random() < 0.59 else "F"
        closes = 16.0 if sex == "M" else 14.8
        return cls(
            age=age,
            sex=sex,
            scale=rng.uniform(1.3, 1.45) + 0.12 * min(age, 16.0) / 16.0,
            joint_y=rng.uniform(0.57, 0.63),
            centre_x=0.5 + rng.normal(0.0, 0.015),
            radius_shaft=rng.uniform(0.038, 0.047),
            radius_head=rng.uniform(0.088, 0.1),
            inclination=np.deg2rad(rng.uniform(17.0, 26.0)),
            volar_tilt=np.deg2rad(rng.uniform(4.0, 15.0)),
            ulnar_variance=rng.uniform(-0.012, 0.004),
            cortex=rng.uniform(0.008, 0.012),
            density=rng.uniform(0.8, 1.15),
            soft=rng.uniform(0.85, 1.25),
            physis=rng.uniform(0.03, 0.045) if age < closes else None,
            sprain=rng.uniform(0.005, 0.02) if rng.random() < 0.3 else 0.0,
            detail_seed=int(rng.integers(0, 2**63 - 1)),
        )


@dataclass(frozen=True)
class _Fracture:
    """One study's fracture, drawn whether or not the study is fractured (so the other draws stay aligned)."""

    kind: str
    styloid: bool
    severity: float
    visible: tuple[str, ...]
    at: float
    slope: float
    extent: float
    side: int
    tilt_pa: float
    tilt_lateral: float
    shift_pa: float
    shift_lateral: float
    impaction: float
    bulge_sides: tuple[int, int]  # (pa, lateral)
    swelling: float  # soft-tissue swelling around the fracture (widening of the outline)
    styloid_shift: tuple[float, float]

    @classmethod
    def draw(
        cls, rng: np.random.Generator, visibility: Mapping[tuple[str, ...], float], min_severity: float = 0.0
    ) -> _Fracture:
        """Kind, subtlety (severity at least ``min_severity``), displacement and the views that show it."""
        kind = str(rng.choice(_FRACTURE_KINDS, p=_FRACTURE_KIND_P))
        patterns = list(visibility)
        weights = np.array([visibility[p] for p in patterns], dtype=float)
        visible = patterns[int(rng.choice(len(patterns), p=weights / weights.sum()))]
        severity = min_severity + (1.0 - min_severity) * float(rng.beta(1.6, 1.3))
        complete = rng.random() < 0.25 + 0.75 * severity
        return cls(
            kind=kind,
            styloid=kind == "styloid" or rng.random() < 0.3,
            severity=severity,
            visible=tuple(visible),
            at=rng.uniform(0.045, 0.08),
            slope=rng.uniform(-0.25, 0.25),
            extent=1.0 if complete else rng.uniform(0.35, 0.8),
            side=int(rng.choice([-1, 1])),
            tilt_pa=-np.deg2rad(rng.uniform(0.0, 10.0)) * severity,
            tilt_lateral=np.deg2rad(rng.uniform(10.0, 40.0)) * severity,
            shift_pa=-rng.uniform(0.0, 0.03) * severity**2 * complete,
            shift_lateral=rng.uniform(0.005, 0.045) * severity**2 * complete,
            impaction=rng.uniform(0.0, 0.015) * severity * complete,
            bulge_sides=(int(rng.choice([-1, 0, 1])), int(rng.choice([0, 1, 1]))),
            swelling=rng.uniform(0.02, 0.06) * severity,
            styloid_shift=(rng.uniform(0.002, 0.008), rng.uniform(0.0, 0.006)),
        )

    @property
    def ao_classification(self) -> str:
        """AO paediatric code(s), as GRAZPEDWRI-DX writes them."""
        codes = [_AO[self.kind]]
        if self.styloid and self.kind != "styloid":
            codes.append(_AO["styloid"])
        return "; ".join(codes)

    def radius_break(self, view: str, scale: float) -> _Break | None:
        """The break of the distal radius in ``view``, if this is a complete (or greenstick) fracture."""
        if self.kind != "complete":
            return None
        rotation, shift = (self.tilt_pa, self.shift_pa) if view == "pa" else (self.tilt_lateral, self.shift_lateral)
        return _Break(
            at=self.at * scale,
            slope=self.slope,
            depth=0.45 + 0.55 * self.severity,
            width=0.002 + 0.005 * self.severity,
            extent=self.extent,
            side=self.side,
            rotation=rotation,
            shift=(-self.impaction * scale, shift * scale),
        )

    def radius_bulge(self, view: str, scale: float) -> _Bulge | None:
        """The torus bulge in ``view``, if this is a buckle fracture."""
        if self.kind != "buckle":
            return None
        side = self.bulge_sides[0 if view == "pa" else 1]
        return _Bulge(at=self.at * scale, amp=(0.004 + 0.012 * self.severity) * scale, length=0.008, side=side)

    def styloid_break(self, scale: float) -> _Break | None:
        """The break across the base of the ulnar styloid."""
        if not self.styloid:
            return None
        du, dv = self.styloid_shift
        s = 0.4 + 0.6 * self.severity
        return _Break(
            at=0.02 * scale, slope=0.3, depth=0.5 + 0.5 * s, width=0.002, extent=1.0, side=1, rotation=0.3 * s,
            shift=(du * s * scale, dv * s * scale),
        )  # fmt: skip


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, smooth in between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _local(Y: np.ndarray, X: np.ndarray, origin: tuple[float, float], angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u, pointing up when ``angle`` is 0) and across (v, pointing right) an axis."""
    dy, dx = Y - origin[0], X - origin[1]
    return -dy * np.cos(angle) + dx * np.sin(angle), dy * np.sin(angle) + dx * np.cos(angle)


def _window(
    size: int, ys: Sequence[float] | np.ndarray, xs: Sequence[float] | np.ndarray, pad: float
) -> tuple[slice, slice]:
    """Pixel slices of the box around points (fractions of the image), grown by ``pad``, clipped to the image."""

    def span(values: Sequence[float] | np.ndarray) -> slice:
        low = int(np.floor((min(values) - pad) * (size - 1)))
        high = int(np.ceil((max(values) + pad) * (size - 1))) + 1
        return slice(min(max(low, 0), size), min(max(high, 0), size))

    return span(ys), span(xs)


def _chord(half: np.ndarray | float, d: np.ndarray) -> np.ndarray:
    """Path length through a round section of half-width ``half`` at distance ``d`` from its centre."""
    return 2.0 * np.sqrt(np.maximum(half * half - d * d, 0.0))


@cache
def _axis(size: int) -> np.ndarray:
    """Pixel centres in [0, 1] along one side (read-only, shared)."""
    axis = np.linspace(0.0, 1.0, size)
    axis.flags.writeable = False
    return axis


def _coords(size: int, rows: slice = slice(None), cols: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Row (a column vector) and column (a row vector) coordinates in [0, 1] of a window, for broadcasting."""
    axis = _axis(size)
    return axis[rows, None], axis[None, cols]


def _hollow(half: np.ndarray | float, cortex: np.ndarray | float, d: np.ndarray) -> np.ndarray:
    """Projected density of a hollow round bone section: cortex (the shell) and medulla (the core)."""
    outer, inner = _chord(half, d), _chord(half - cortex, d)
    return _CORTEX * (outer - inner) + _MEDULLA * inner


def _bone_density(bone: _LongBone, u: np.ndarray, v: np.ndarray, px: float, bulge: _Bulge | None) -> np.ndarray:
    """Projected density of a long bone at frame coordinates (u, v); ``px`` is the pixel size."""
    grow = _smoothstep((u - (bone.length - bone.flare)) / bone.flare)
    half = bone.radius + (bone.head - bone.radius) * grow + bone.base * (1.0 - _smoothstep(u / bone.flare))
    centre = bone.offset * grow
    cortex = bone.cortex + (bone.thin - bone.cortex) * grow
    if bulge is not None:
        bump = bulge.amp * np.exp(-0.5 * ((u - (bone.length - bulge.at)) / bulge.length) ** 2)
        half = half + (bump if bulge.side == 0 else bump / 2)
        centre = centre + bulge.side * bump / 2
        cortex = cortex + 0.6 * bump
    d = v - centre
    below = bone.length + bone.tilt * d + bone.cup * d**2 / bone.head - u  # distance under the distal surface
    density = _hollow(half, cortex, d) * soft(below, 1.0 / px) * soft(u, 1.0 / px)
    chord = _chord(1.0, d / half) / 2.0
    density += bone.plate * chord * np.exp(-0.5 * ((below - 1.5 * px) / (1.2 * px)) ** 2)
    if bone.physis is not None:
        wave = 0.003 * np.sin(d / bone.head * 4.0)
        density *= 1.0 - 0.7 * np.exp(-0.5 * ((below - bone.physis - wave) / max(0.0035, 0.8 * px)) ** 2)
        density += 0.12 * chord * np.exp(-0.5 * ((below - bone.physis - wave - 0.007) / 0.003) ** 2)
    return density


def _render_bone(
    canvas: np.ndarray, bone: _LongBone, brk: _Break | None = None, bulge: _Bulge | None = None
) -> tuple[float, float]:
    """Add a long bone (maybe broken) to ``canvas``; returns the (dy, dx) move of its distal end's centre."""
    size = canvas.shape[0]
    px = 1.0 / (size - 1)
    tip = (bone.origin[0] - bone.length * np.cos(bone.angle), bone.origin[1] + bone.length * np.sin(bone.angle))
    reach = max(bone.head, bone.radius + bone.base) + abs(bone.offset) + 0.03
    rows, cols = _window(size, (bone.origin[0], tip[0]), (bone.origin[1], tip[1]), reach)
    u, v = _local(*_coords(size, rows, cols), bone.origin, bone.angle)
    if brk is None:
        canvas[rows, cols] += _bone_density(bone, u, v, px, bulge)
        return 0.0, 0.0
    hinge = bone.length - brk.at
    cos, sin = np.cos(brk.rotation), np.sin(brk.rotation)
    pu, pv = u - brk.shift[0] - hinge, v - brk.shift[1]  # undo the distal fragment's move
    fu, fv = hinge + cos * pu + sin * pv, -sin * pu + cos * pv
    half = bone.radius + (bone.head - bone.radius) * float(_smoothstep(np.asarray(1.0 - brk.at / bone.flare)))
    for (uu, vv), sign in (((u, v), -1.0), ((fu, fv), 1.0)):
        line = uu - hinge - brk.slope * vv
        crossed = soft(brk.side * vv / half - (1.0 - 2.0 * brk.extent), 8.0)
        lucent = 1.0 - brk.depth * crossed * np.exp(-0.5 * (line / max(brk.width, 0.6 * px)) ** 2)
        canvas[rows, cols] += _bone_density(bone, uu, vv, px, bulge) * soft(sign * line, 1.0 / px) * lucent
    du = brk.shift[0] - brk.at * (1.0 - cos)
    dv = brk.shift[1] + brk.at * sin
    return -du * np.cos(bone.angle) + dv * np.sin(bone.angle), du * np.sin(bone.angle) + dv * np.cos(bone.angle)


def _render_carpals(canvas: np.ndarray, carpals: Iterable[tuple[float, ...]]) -> None:
    """Add hollow ellipsoidal carpal bones (rounded, a little irregular) to ``canvas``.

    Args:
        canvas: density map to add to.
        carpals: one row per bone: centre row, centre column, half-axes a and b, angle of the a axis (radians),
            amplitude and phase of a three-lobed wobble of the outline.
    """
    size = canvas.shape[0]
    for cy, cx, a, b, angle, amp, phase in carpals:
        rows, cols = _window(size, (cy,), (cx,), 1.3 * max(a, b))
        Y, X = _coords(size, rows, cols)
        dy, dx = Y - cy, X - cx
        p, q = (dx * np.cos(angle) - dy * np.sin(angle)) / a, (dx * np.sin(angle) + dy * np.cos(angle)) / b
        r = np.sqrt(p * p + q * q) + 1e-9
        c, s = p / r, q / r  # cos(3t + phase) from cos t and sin t, without arctan2
        lobes = c * (4 * c * c - 3) * np.cos(phase) - s * (3 - 4 * s * s) * np.sin(phase)
        canvas[rows, cols] += 1.1 * (a + b) / 2 * _hollow(1.0, 0.08, r / (1.0 + amp * lobes))


# ----------------------------------------------------------------------------------------------- a view


def _forearm_bones(view: str, patient: _Patient) -> tuple[_LongBone, _LongBone, _LongBone]:
    """Radius, ulna and ulnar styloid of the canonical right wrist in ``view``.

    PA: radius on the left, ulna on the right. Lateral: volar side on the left, the ulna behind the radius.
    """
    s, x0, bottom = patient.scale, patient.centre_x, 1.15
    length = bottom - patient.joint_y
    cortex, physis = patient.cortex * s, None if patient.physis is None else patient.physis * s
    if view == "pa":  # wide, flared towards the radial styloid, the surface sloping by the radial inclination
        radius = _LongBone(
            origin=(bottom, x0 - 0.045 * s), angle=0.0, length=length, radius=patient.radius_shaft * s,
            head=patient.radius_head * s, flare=0.17 * s, offset=-0.02 * s, cortex=cortex, physis=physis,
            tilt=-np.tan(patient.inclination), cup=0.05,
        )  # fmt: skip
        ulna_x, ulna_head, ulna_tilt = x0 + 0.105 * s, 0.044 * s, 0.15
    else:  # narrower, the articular surface cupped and facing volarly
        radius = _LongBone(
            origin=(bottom, x0), angle=0.0, length=length, radius=0.036 * s, head=0.066 * s, flare=0.15 * s,
            offset=0.004 * s, cortex=cortex, physis=physis, tilt=np.tan(patient.volar_tilt), cup=0.12,
        )  # fmt: skip
        ulna_x, ulna_head, ulna_tilt = x0 + 0.012 * s, 0.034 * s, 0.0
    ulna_length = length - (0.014 - patient.ulnar_variance) * s
    ulna = _LongBone(
        origin=(bottom, ulna_x), angle=0.0, length=ulna_length, radius=0.028 * s, head=ulna_head, flare=0.12 * s,
        cortex=cortex, physis=physis, tilt=ulna_tilt, cup=-0.45, plate=0.25,
    )  # fmt: skip
    styloid = _LongBone(
        origin=(bottom - ulna_length + 0.01 * s, ulna_x + 0.62 * ulna_head), angle=np.deg2rad(6.0),
        length=0.042 * s, radius=0.012 * s, head=0.005 * s, flare=0.042 * s, cortex=0.003 * s, thin=0.002 * s,
        cup=-0.9, plate=0.1,
    )  # fmt: skip
    return radius, ulna, styloid


def _hand_bones(canvas: np.ndarray, view: str, patient: _Patient, moved: tuple[float, float]) -> None:
    """Carpals (those ossified at the patient's age) and proximal metacarpals, shifted by ``moved``."""
    s, detail = patient.scale, np.random.default_rng(patient.detail_seed)
    y0 = patient.joint_y + moved[0] + (0.022 if view == "pa" else 0.008) * s
    x0 = patient.centre_x + moved[1]
    carpals = []
    for dy, dx, a, b, angle, ossifies in _CARPALS[view].values():
        jitter = detail.normal(0.0, 0.004, size=2)
        wobble = (detail.uniform(0.03, 0.12), detail.uniform(0.0, 2 * np.pi))
        growth = min(1.0, 0.45 + 0.55 * (patient.age - ossifies) / 4.0)
        if patient.age >= ossifies:
            centre = (y0 + (dy + jitter[0]) * s, x0 + (dx + jitter[1]) * s)
            carpals.append((*centre, a * s * growth, b * s * growth, np.deg2rad(angle), *wobble))
    _render_carpals(canvas, carpals)
    for dy, dx, angle, length, half in _METACARPALS[view]:
        tilt = np.deg2rad(angle + detail.normal(0.0, 2.0))
        bone = _LongBone(
            origin=(y0 + dy * s, x0 + dx * s), angle=tilt, length=length * s, radius=half * s,
            head=1.45 * half * s, flare=0.06 * s, base=0.6 * half * s, cortex=0.35 * half * s,
            thin=0.15 * half * s, cup=-0.9, plate=0.2,
        )  # fmt: skip
        _render_bone(canvas, bone)


def _limb(view: str, patient: _Patient, Y: np.ndarray, swelling: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half-width of the forearm-and-hand outline on each row (the hand is wider in PA).

    ``swelling`` widens the outline around the distal radius (on both sides in PA, dorsally in lateral).
    """
    forearm, hand, shift, _ = _LIMB[view]
    s = patient.scale
    t = _smoothstep((patient.joint_y - Y) / (0.12 * s) + 0.3)
    bump = swelling * np.exp(-0.5 * ((Y - patient.joint_y - 0.07 * s) / (0.08 * s)) ** 2)
    centre = patient.centre_x + (-0.01 + (0.01 + shift) * t) * s + (0.0 if view == "pa" else bump / 2)
    return centre, (forearm + (hand - forearm) * t) * s + (bump if view == "pa" else bump / 2)


def _soft_tissue(view: str, patient: _Patient, size: int, swelling: float) -> np.ndarray:
    """Projected soft tissue of the forearm, hand and thumb (rounded profiles, thickest in the middle)."""
    Y, X = _coords(size)
    s = patient.scale
    centre, half = _limb(view, patient, Y, swelling)
    tissue = 0.75 * _chord(half, X - centre)
    dy, dx, angle = _LIMB[view][3]
    base, tip = (patient.joint_y + dy * s, patient.centre_x + dx * s), np.deg2rad(angle)
    end = (base[0] - 0.3 * s * np.cos(tip), base[1] + 0.3 * s * np.sin(tip))
    rows, cols = _window(size, (base[0], end[0]), (base[1], end[1]), 0.1 * s)
    u, v = _local(Y[rows], X[:, cols], base, tip)
    thumb = _chord(0.055 * s, v) * soft(u + 0.05, 80.0) * soft(0.3 * s - u, 80.0)
    tissue[rows, cols] = np.maximum(tissue[rows, cols], thumb)
    return _SOFT * patient.soft * tissue


@dataclass(frozen=True)
class _Cast:
    """A plaster or fibreglass cast (round) or a dorsal splint (one slab)."""

    kind: str  # "cast" or "splint"
    fibreglass: bool
    pad: float
    thickness: float
    top: float  # how far above the radiocarpal joint it reaches

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Cast:
        """A random cast or splint."""
        return cls(
            kind="cast" if rng.random() < 0.65 else "splint",
            fibreglass=bool(rng.random() < 0.4),
            pad=rng.uniform(0.005, 0.02),
            thickness=rng.uniform(0.012, 0.028),
            top=rng.uniform(0.1, 0.22),
        )


def _cast_density(
    cast: _Cast, view: str, patient: _Patient, swelling: float, rng: np.random.Generator, size: int
) -> np.ndarray:
    """Projected cast or splint: bright rims (round cast) or a slab, with plaster grain or fibreglass mesh."""
    Y, X = _coords(size)
    centre, half = _limb(view, patient, Y, swelling)
    inner, d = half + cast.pad, X - centre
    if cast.kind == "cast":
        shell = _chord(inner + cast.thickness, d) - _chord(inner, d)
    elif view == "pa":  # a slab seen face on: a veil across the forearm
        shell = 2.0 * cast.thickness * soft(inner - np.abs(d), 300.0)
    else:  # the slab edge-on, along the dorsal skin
        shell = 0.25 * inner * soft(d - inner, 300.0) * soft(inner + cast.thickness - d, 300.0)
    if cast.fibreglass:
        angle, period = rng.uniform(0.0, np.pi), rng.uniform(0.012, 0.02)
        a, b = np.cos(angle) * X + np.sin(angle) * Y, -np.sin(angle) * X + np.cos(angle) * Y
        grain = 0.8 + 0.2 * np.abs(np.sin(np.pi * a / period) * np.sin(np.pi * b / period))
    else:
        grain = 0.8 + 0.4 * smooth_noise(rng, size, 2.0 * size / 256)
    top = patient.joint_y - cast.top * patient.scale + 0.1 * (X - patient.centre_x)
    return _CAST * shell * grain * soft(Y - top, 150.0)


def _collimate(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sometimes a collimated field: the area outside it stays light (unexposed film)."""
    if rng.random() >= 0.35:
        return density
    Y, X = _coords(density.shape[0])
    top, left, bottom, right = rng.uniform(0.01, 0.08, size=4)
    field = soft(Y - top, 400.0) * soft(1.0 - bottom - Y, 400.0) * soft(X - left, 400.0) * soft(1 - right - X, 400.0)
    return density + rng.uniform(0.6, 1.5) * (1.0 - field)


def _render_view(
    view: str,
    patient: _Patient,
    fracture: _Fracture | None,
    cast: _Cast | None,
    rng: np.random.Generator,
    size: int,
) -> np.ndarray:
    """One film of the canonical right wrist in ``view``, as floats in about [0, 1] (before marker and mirror)."""
    bones = np.zeros((size, size))
    radius, ulna, styloid = _forearm_bones(view, patient)
    s = patient.scale
    brk = None if fracture is None else fracture.radius_break(view, s)
    bulge = None if fracture is None else fracture.radius_bulge(view, s)
    moved = _render_bone(bones, radius, brk, bulge)
    _render_bone(bones, ulna)
    _render_bone(bones, styloid, None if fracture is None else fracture.styloid_break(s))
    _hand_bones(bones, view, patient, (0.8 * moved[0], 0.8 * moved[1]))
    grain = smooth_noise(rng, size, (1.4 * size / 256, 0.6 * size / 256) if view == "pa" else 0.9 * size / 256)
    swelling = max(patient.sprain, 0.0 if fracture is None else fracture.swelling) * s
    density = _soft_tissue(view, patient, size, swelling) + patient.density * bones * (0.75 + 0.5 * grain)
    if cast is not None:
        density = density + _cast_density(cast, view, patient, swelling, rng, size)
    density = _collimate(reposition(density, rng, degrees=6.0, scale=(0.92, 1.08), shift=0.04), rng)
    film = 1.0 - np.exp(-density * rng.uniform(0.85, 1.2))
    return develop(film, rng, brightness=0.08, noise=(0.006, 0.025))


# ---------------------------------------------------------------------------------------------- studies


def _check_views(views: Sequence[str]) -> tuple[str, ...]:
    """The requested views in canonical order; at least one, each known, no repeats."""
    unknown = [v for v in views if v not in WRIST_VIEWS]
    if unknown or not views or len(set(views)) != len(views):
        raise ValueError(f"views must be a non-empty selection of {', '.join(WRIST_VIEWS)} without repeats: {views}")
    return tuple(v for v in WRIST_VIEWS if v in views)


def _shown_in(fracture: _Fracture, views: tuple[str, ...], forced: Sequence[str] | None) -> tuple[str, ...]:
    """Views that show the fracture: the forced ones, or the drawn pattern (all rendered views if it misses them)."""
    if forced is not None:
        shown = _check_views(forced)
        if not set(shown) <= set(views):
            raise ValueError(f"fracture_views {tuple(forced)} are not all among the rendered views {views}")
        return shown
    return tuple(v for v in views if v in fracture.visible) or views


def synthetic_wrist_study(
    rng: np.random.Generator,
    *,
    fractured: bool,
    size: int = 256,
    views: Sequence[str] = WRIST_VIEWS,
    laterality: str | None = None,
    fracture_views: Sequence[str] | None = None,
    cast: bool | None = None,
    marker: bool | None = None,
    cast_rate: float = 0.25,
    visibility: Mapping[tuple[str, ...], float] = DEFAULT_VISIBILITY,
    min_severity: float = 0.0,
) -> WristStudy:
    """A synthetic wrist study: PA and/or lateral films (``uint8``, size x size) of one patient.

    The patient, positioning and exposure depend only on ``rng``: the same generator state gives the same films
    with ``fractured`` True or False except where the fracture shows, and a view's film does not depend on which
    other views are rendered. Options left as ``None`` are drawn (and drawn the same way when given, so giving
    one changes nothing else).

    Args:
        rng: source of all randomness.
        fractured: draw a distal forearm fracture (complete radius fracture, buckle or ulnar styloid; obvious to
            subtle).
        size: side of each square image in pixels.
        views: which of "pa" and "lateral" to render.
        laterality: "L" (films mirrored) or "R".
        fracture_views: the views that show the fracture (a subset of ``views``); by default drawn from
            ``visibility``, and all rendered views when the drawn pattern misses them (one-view studies).
        cast: a cast or splint on the forearm; drawn at ``cast_rate`` whatever the class.
        marker: burn a lead L/R marker into a top corner of each film (drawn, 60%).
        cast_rate: chance of a cast or splint when ``cast`` is None.
        visibility: chance of each pattern of views that show a fracture.
        min_severity: floor of the fracture's severity in [0, 1] (0: obvious to subtle; the demo raises it so a
            model trained for minutes on a CPU has something it can learn).

    Raises:
        ValueError: for unknown views or laterality, or ``fracture_views`` for a normal study or outside ``views``.
    """
    views = _check_views(views)
    if laterality not in (None, "L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', not {laterality!r}")
    if fracture_views is not None and not fractured:
        raise ValueError("fracture_views given for a study without a fracture")
    patient = _Patient.draw(child(rng))
    fracture = _Fracture.draw(child(rng), visibility, min_severity)
    setup = child(rng)
    drawn_cast, has_cast = _Cast.draw(setup), setup.random() < cast_rate
    drawn_side, has_marker = ("L" if setup.random() < 0.55 else "R"), setup.random() < 0.6
    corner, right = setup.uniform(0.03, 0.08, size=2), setup.random() < 0.5
    view_rngs = {view: child(rng) for view in WRIST_VIEWS}

    side = laterality or drawn_side
    the_cast = drawn_cast if (has_cast if cast is None else cast) else None
    shown = _shown_in(fracture, views, fracture_views) if fractured else ()
    height, width = int(size * 0.065), int(size * 0.045)
    images: dict[str, np.ndarray] = {}
    for view in views:
        image = _render_view(view, patient, fracture if view in shown else None, the_cast, view_rngs[view], size)
        if side == "L":
            image = image[:, ::-1]
        if has_marker if marker is None else marker:
            left = size - int(corner[1] * size) - width if right else int(corner[1] * size)
            draw_letter(image, side, int(corner[0] * size), left, height, width, 0.97)
        images[view] = to_u8(image)
    return WristStudy(
        views=images,
        label="fracture" if fractured else "normal",
        fracture_views=shown,
        laterality=side,
        age=patient.age,
        sex=patient.sex,
        cast=the_cast is not None,
        ao_classification=fracture.ao_classification if fractured else "",
    )


def _render_study(args: tuple[np.random.Generator, bool, int, tuple[str, ...], float, float]) -> WristStudy:
    """One study from its pre-drawn generator and options (a module-level function, for worker processes)."""
    study_rng, fractured, size, views, cast_rate, min_severity = args
    return synthetic_wrist_study(
        study_rng, fractured=fractured, size=size, views=views, cast_rate=cast_rate, min_severity=min_severity
    )


def synthetic_wrist_studies(
    n: int,
    *,
    seed: int,
    fracture_rate: float = 0.4,
    size: int = 256,
    one_view_rate: float = 0.15,
    cast_rate: float = 0.25,
    min_severity: float = 0.0,
    workers: int = 1,
) -> list[WristStudy]:
    """``n`` synthetic wrist studies with exact shares of fractured and one-view studies, in random order.

    Args:
        n: number of studies.
        seed: seed of everything drawn; the same seed gives the same studies, whatever ``workers``.
        fracture_rate: share of fractured studies (rounded to a count).
        size: side of each square image.
        one_view_rate: share of studies that keep only one view (PA 60%, lateral 40%), rounded to a count.
        cast_rate: chance of a cast or splint, the same in both classes.
        min_severity: floor of the fractures' severity (see :func:`synthetic_wrist_study`).
        workers: rendering processes.
    """
    rng = np.random.default_rng(seed)
    fractured = rng.permutation(n) < round(n * fracture_rate)
    one_view = rng.permutation(n) < round(n * one_view_rate)
    work = []
    for k in range(n):
        study_rng, only = child(rng), ("pa",) if rng.random() < 0.6 else ("lateral",)
        views = only if one_view[k] else WRIST_VIEWS
        work.append((study_rng, bool(fractured[k]), size, tuple(views), cast_rate, min_severity))
    if workers <= 1:
        return [_render_study(item) for item in work]
    return list(parallel_map(_render_study, work, workers=workers, description=f"generating {n} wrist studies"))


def _graz_row(stem: str, patient: int, timehash: int, study: WristStudy, view: str) -> dict[str, str]:
    """One ``dataset.csv`` row in the GRAZPEDWRI-DX schema (empty cells where GRAZ leaves them empty)."""
    return {
        "filestem": stem,
        "patient_id": str(patient),
        "study_number": "1",
        "timehash": str(timehash),
        "gender": study.sex,
        "age": f"{study.age:g}",
        "laterality": study.laterality,
        "projection": str(PROJECTION[view]),
        "initial_exam": "1",
        "ao_classification": study.ao_classification,
        "cast": "1" if study.cast else "",
        "diagnosis_uncertain": "",
        "osteopenia": "",
        "fracture_visible": "1" if view in study.fracture_views else "",
        "metal": "",
        "pixel_spacing": "0.144",
        "device_manufacturer": "Siemens",
    }


def write_wrist_studies(studies: Sequence[WristStudy], root: Path, *, seed: int = 0) -> Path:
    """Write studies in the GRAZPEDWRI-DX layout: ``root/images/<filestem>.png`` and ``root/dataset.csv``.

    Each study is its own patient (numbered from 1, study number 1); file stems read
    ``<patient:04d>_<timehash:010d>_01_WRI-<L|R><1|2>_<M|F><age:03d>`` (projection 1 = PA, 2 = lateral). The
    CSV has GRAZ's columns, a UTF-8 BOM and CRLF line ends; ``fracture_visible`` is 1 on the films that show the
    fracture and ``ao_classification`` is set on every film of a fractured study.

    Args:
        studies: the studies to write (at most 9,999).
        root: folder to write into (created if missing).
        seed: seed of the time hashes in the file names.

    Returns:
        The path of ``dataset.csv``.
    """
    if len(studies) > 9999:
        raise ValueError(f"GRAZ file stems number patients with 4 digits; got {len(studies)} studies")
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for patient, study in enumerate(studies, start=1):
        timehash = int(rng.integers(10**8, 2 * 10**9))
        for view in (v for v in WRIST_VIEWS if v in study.views):
            timehash += int(rng.integers(20, 150))  # the lateral is taken a minute or two after the PA
            age = int(study.age)
            stem = f"{patient:04d}_{timehash:010d}_01_WRI-{study.laterality}{PROJECTION[view]}_{study.sex}{age:03d}"
            save_png(study.views[view], root / "images" / f"{stem}.png")
            rows.append(_graz_row(stem, patient, timehash, study, view))
    path = root / "dataset.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=GRAZ_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    return path

"""Procedural CT torso phantoms with a spine whose label map is exact.

A phantom is drawn from a seed: a torso (air outside, subcutaneous fat, soft tissue, lungs in
the thorax) and a spine along a sagittally curved centreline (cervical and lumbar lordosis,
thoracic kyphosis, a small lateral sway). Every level is a vertebra built from a few primitives
in the level's own frame: an elliptic-cylinder body, a neural arch ring (pedicles and lamina), a
spinous process and two transverse processes. C1 is a plain ring, C2 carries a dens and the
sacrum is a tilted wedge. Intervertebral discs fill the gaps between bodies and are not labelled.

The label map is drawn first and the CT is painted from it (tissue class -> HU, a slight blur,
Gaussian noise), so the ground truth is exact on the CT grid. Everything is built on an RAS grid
and then reoriented without interpolation, so every orientation shows the same world geometry.

Sizes are plausible adult values, not anatomy: this is test, demo and training data for
SpineCloud's small default model, made to be fast (vectorised numpy, one bounding box per
level), deterministic per seed and easy to read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinecloud_shared import labels
from spinecloud_shared.centroids import Centroids, centroids_from_labels
from spinecloud_shared.volume import Volume

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
RealArray = npt.NDArray[np.floating[Any]]

#: The 25 standard classes, head to feet: C1..C7, T1..T12, L1..L5, sacrum.
SPINE: tuple[labels.Vertebra, ...] = tuple(
    v for v in labels.VERTEBRAE if v.id in labels.STANDARD_IDS
)
_SACRUM_INDEX = len(SPINE) - 1

# Per-level sizes in mm (full body height, half-widths elsewhere), given at anchor levels and
# interpolated between them. Anchor indices into SPINE: C1, C3, C7, T1, T6, T12, L1, L5.
_ANCHORS = (0, 2, 6, 7, 12, 18, 19, 23)
_SIZES: dict[str, tuple[float, ...]] = {
    "body_rx": (9, 8, 10, 12, 15, 21, 22, 25),  # body half-width (left-right)
    "body_ra": (7, 7.5, 8, 9, 13, 15, 16, 17),  # body half-depth (anterior-posterior)
    "body_h": (10, 13, 14, 16, 19, 23, 25, 27),  # body height along the spine
    "disc_h": (3, 4.5, 5, 5, 5.5, 7, 8.5, 10),  # disc below this level
    "canal_rx": (13, 12, 12, 9, 8, 9, 10, 12),  # spinal canal half-width
    "canal_ra": (8, 7.5, 7, 7, 7.5, 8, 8, 9),  # spinal canal half-depth
    "arch_t": (4, 4, 4.5, 5, 5.5, 6.5, 7, 8),  # thickness of pedicles and lamina
    "spinous_len": (6, 10, 22, 25, 30, 27, 28, 22),
    "spinous_drop_deg": (0, 20, 25, 35, 60, 25, 10, 10),  # downward slope of the spinous process
    "transverse_len": (14, 8, 10, 14, 15, 10, 16, 22),
    "transverse_back_deg": (0, 0, 5, 20, 35, 35, 10, 5),  # backward sweep of transverse processes
    # Torso around the level: half-axes of the skin ellipse, and skin-to-spinous-tip muscle.
    "torso_rx": (55, 55, 60, 130, 140, 145, 148, 160),
    "torso_ry": (55, 55, 55, 80, 105, 110, 110, 112),
    "back_muscle": (20, 20, 22, 28, 30, 35, 40, 45),
}


class Tissue(IntEnum):
    """Tissue classes of a phantom; the CT is painted from these."""

    AIR = 0
    LUNG = 1
    FAT = 2
    SOFT = 3
    DISC = 4
    CANCELLOUS = 5
    CORTICAL = 6


@dataclass(frozen=True, kw_only=True)
class PhantomSpec:
    """What to generate. Equal specs give identical phantoms.

    ``levels`` is the first and last level the field of view covers (names as in
    ``labels.by_name``: ``("T10", "sacrum")``); ``None`` picks a contiguous run of
    ``run_length`` levels from the seed. The field of view extends ``margin_mm`` beyond the
    first and last vertebral bodies, so parts of neighbouring levels may show (and are labelled).
    The anatomy depends on the seed only, so one seed with two level ranges is one patient
    scanned twice. ``spacing_mm`` is the voxel size along the output array axes, which run along
    ``orientation`` (nibabel axis codes such as 'RAS', 'LPS', 'PIR'). ``fov_mm`` fixes the
    left-right and anterior-posterior extent; ``None`` fits the body.
    """

    seed: int = 0
    levels: tuple[str, str] | None = None
    run_length: tuple[int, int] = (4, 8)
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    orientation: str = "RAS"
    margin_mm: float = 10.0
    fov_mm: tuple[float, float] | None = None
    noise_hu: float = 20.0
    blur_mm: float = 0.6

    def __post_init__(self) -> None:
        _ras_axes(self.orientation)
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive sizes, got {self.spacing_mm}.")
        lo, hi = self.run_length
        if not 1 <= lo <= hi <= len(SPINE):
            raise ValueError(f"run_length must satisfy 1 <= min <= max <= 25, got {lo, hi}.")
        if self.levels is not None:
            _level_range(self.levels)
        if self.noise_hu < 0 or self.blur_mm < 0 or self.margin_mm < 0:
            raise ValueError("noise_hu, blur_mm and margin_mm must not be negative.")


@dataclass(frozen=True, eq=False)
class Phantom:
    """A generated case: CT (int16 HU), its exact label map (uint8 canonical ids), centroids.

    ``tissues`` (uint8 ``Tissue`` values) is the map the CT was painted from, on the same grid;
    ``centroids`` are the RAS mm centres of mass of the labelled classes.
    """

    ct: Volume
    labels: Volume
    centroids: Centroids
    tissues: Volume

    @property
    def level_ids(self) -> tuple[int, ...]:
        """Canonical ids present in the label map, head to feet."""
        return tuple(sorted(self.centroids, key=lambda i: labels.by_id(i).order))


def generate_phantom(spec: PhantomSpec | None = None) -> Phantom:
    """Generate the phantom that ``spec`` describes (the default spec when ``None``)."""
    spec = spec or PhantomSpec()
    rng = np.random.default_rng(spec.seed)
    anatomy = _draw_anatomy(rng)
    first, last = _level_range(spec.levels) if spec.levels else _random_run(spec, rng)
    spine = _Spine.build(anatomy)
    grid = _Grid.fit(spec, spine, first, last)
    tissues = _paint_torso(grid, spine)
    label_map = np.zeros(grid.shape, dtype=np.uint8)
    for level in spine.levels:
        _draw_vertebra(grid, level, label_map, tissues)
    for disc in spine.discs:
        _draw_disc(grid, disc, label_map, tissues)
    ct = _render_ct(tissues, anatomy, grid, spec, rng)
    meta = {"phantom_seed": spec.seed, "phantom_spec": repr(spec)}
    ras_labels = Volume(label_map, grid.affine, meta)
    centroids = centroids_from_labels(ras_labels)
    codes = spec.orientation.upper()
    return Phantom(
        ct=Volume(ct, grid.affine, meta).reoriented(codes),
        labels=ras_labels.reoriented(codes),
        centroids=centroids,
        tissues=Volume(tissues, grid.affine, meta).reoriented(codes),
    )


def write_phantom_dicom(
    phantom: Phantom, folder: str | Path, *, key: str | None = None, **kwargs: Any
) -> list[Path]:
    """Write the phantom's CT as a DICOM CT series (``dicom_write.write_ct_series``).

    The UIDs derive from ``key``, by default from the phantom's spec, so writing the same
    phantom again gives the same UIDs. ``kwargs`` go to ``write_ct_series``.
    """
    # Imported here so that generating phantoms does not load the DICOM stack.
    from spinecloud_shared.dicom_write import write_ct_series

    key = key or f"spinecloud-phantom:{phantom.ct.meta.get('phantom_spec', '')}"
    return write_ct_series(phantom.ct, folder, key=key, **kwargs)


# --- spec helpers ---------------------------------------------------------------------------

_WORLD_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def _ras_axes(orientation: str) -> tuple[int, int, int]:
    """For each output array axis, the world axis (0 x, 1 y, 2 z) it runs along."""
    codes = orientation.upper()
    axes = tuple(_WORLD_AXIS.get(c, -1) for c in codes)
    if len(codes) != 3 or sorted(axes) != [0, 1, 2]:
        raise ValueError(
            f"orientation must be three axis codes like 'RAS' or 'PIR', got {orientation!r}."
        )
    a, b, c = axes
    return a, b, c


def _ras_spacing(spec: PhantomSpec) -> tuple[float, float, float]:
    """Voxel size along x, y, z of the RAS grid, from the spacing of the output axes."""
    out = [0.0, 0.0, 0.0]
    for axis, size in zip(_ras_axes(spec.orientation), spec.spacing_mm, strict=True):
        out[axis] = float(size)
    return out[0], out[1], out[2]


def _level_range(levels: tuple[str, str]) -> tuple[int, int]:
    """Indices into SPINE of the first and last level; ValueError when unknown or reversed."""
    names = [v.name.lower() for v in SPINE]
    first, last = (str(name).strip().lower() for name in levels)
    if first not in names or last not in names:
        raise ValueError(f"levels must name standard classes C1..L5 or sacrum, got {levels}.")
    i, j = names.index(first), names.index(last)
    if i > j:
        raise ValueError(f"levels must run head to feet, got {levels}.")
    return i, j


def _random_run(spec: PhantomSpec, rng: np.random.Generator) -> tuple[int, int]:
    lo, hi = spec.run_length
    length = int(rng.integers(lo, hi + 1))
    start = int(rng.integers(0, len(SPINE) - length + 1))
    return start, start + length - 1


# --- anatomy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
    """The per-patient random draws; everything else follows from them deterministically."""

    scale: float
    lordosis_c: float
    kyphosis_t: float
    lordosis_l: float
    sway: float
    sway_phase: float
    sacrum_tilt_deg: float
    torso_scale: tuple[float, float]
    fat_mm: float
    hu: dict[Tissue, float]


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one patient. The order of draws is fixed so that a seed always gives the same one."""
    u = rng.uniform
    hu = {
        Tissue.AIR: -1000.0,
        Tissue.LUNG: u(-870, -820),
        Tissue.FAT: u(-110, -85),
        Tissue.SOFT: u(30, 55),
        Tissue.DISC: u(75, 100),
        Tissue.CANCELLOUS: u(160, 280),
        Tissue.CORTICAL: u(750, 1000),
    }
    return _Anatomy(
        scale=u(0.9, 1.1),
        lordosis_c=u(4, 10),
        kyphosis_t=u(10, 25),
        lordosis_l=u(8, 18),
        sway=u(0, 4),
        sway_phase=u(0, 2 * math.pi),
        sacrum_tilt_deg=u(25, 40),
        torso_scale=(u(0.85, 1.1), u(0.85, 1.1)),
        fat_mm=u(8, 25),
        hu=hu,
    )


def _sizes(index: int, scale: float) -> dict[str, float]:
    """Interpolated sizes (mm, angles in degrees) of the level SPINE[index], L5 for the sacrum."""
    at = min(index, _SACRUM_INDEX - 1)
    out = {name: float(np.interp(at, _ANCHORS, table)) for name, table in _SIZES.items()}
    for name in out:
        if not name.endswith("_deg"):
            out[name] *= scale
    return out


@dataclass(frozen=True)
class _Frame:
    """A level's frame in RAS mm: origin, and unit vectors up the spine and anterior."""

    label: int
    index: int
    origin: FloatArray
    up: FloatArray
    anterior: FloatArray
    sizes: dict[str, float]
    radius: float  # every voxel of the part lies within this distance of ``box_centre``
    box_centre: FloatArray


@dataclass(frozen=True)
class _Spine:
    """Where every level and disc sits: frames along the curved centreline."""

    levels: tuple[_Frame, ...]
    discs: tuple[_Frame, ...]
    torso: dict[str, tuple[FloatArray, FloatArray]]  # name -> (z ascending, value)

    @staticmethod
    def build(anatomy: _Anatomy) -> _Spine:
        sizes = [_sizes(i, anatomy.scale) for i in range(len(SPINE))]
        centres_s, disc_s, sacrum_s = _arc_positions(sizes)
        tops = [s - z["body_h"] / 2 for s, z in zip(centres_s, sizes, strict=False)]
        line = _Centreline(anatomy, (0.0, tops[7], tops[19], sacrum_s))
        levels = [_level_frame(line, i, s, sizes[i]) for i, s in enumerate(centres_s)]
        levels.append(_sacrum_frame(line, sacrum_s, sizes[_SACRUM_INDEX], anatomy))
        discs = [_disc_frame(line, i, s, sizes[i], sizes[i + 1]) for i, s in disc_s]
        torso = _torso_profiles(levels, anatomy)
        return _Spine(tuple(levels), tuple(discs), torso)


def _arc_positions(
    sizes: list[dict[str, float]],
) -> tuple[list[float], list[tuple[int, float]], float]:
    """Arc length (mm from the top of C1) of each body centre, each disc centre, sacrum top."""
    s, centres, discs = 0.0, [], []
    for index in range(_SACRUM_INDEX):
        height, disc = sizes[index]["body_h"], sizes[index]["disc_h"]
        centres.append(s + height / 2)
        if index > 0:  # C1-C2 is a joint around the dens, not a disc
            discs.append((index, s + height + disc / 2))
        s += height + disc
    return centres, discs, s


class _Centreline:
    """The spine's centreline, parameterised by arc length s (mm, head to feet).

    Sagittal shape: one sine bump per region (cervical and lumbar anterior, thoracic
    posterior); z follows from the arc length so that levels keep their heights.
    """

    def __init__(self, anatomy: _Anatomy, bounds: tuple[float, float, float, float]) -> None:
        """``bounds``: arc length of the tops of C1, T1 and L1, and of the sacrum's top plate."""
        step = 0.25
        c1, t1, l1, sacrum = bounds
        self.s = np.arange(-80.0, sacrum + 80.0, step)
        y = np.zeros_like(self.s)
        for start, end, amplitude in (
            (c1, t1, anatomy.lordosis_c),
            (t1, l1, -anatomy.kyphosis_t),
            (l1, sacrum, anatomy.lordosis_l),
        ):
            inside = (self.s >= start) & (self.s < end)
            y[inside] += amplitude * np.sin(math.pi * (self.s[inside] - start) / (end - start))
        self.dy = np.gradient(y, step)
        dz = -np.sqrt(1.0 - np.clip(self.dy, -0.9, 0.9) ** 2)
        z = np.concatenate([[0.0], np.cumsum((dz[1:] + dz[:-1]) / 2 * step)])
        x = anatomy.sway * np.sin(2 * math.pi * self.s / 500.0 + anatomy.sway_phase)
        self.xyz = np.stack([x, y, z - np.interp(0.0, self.s, z)], axis=1)

    def point(self, s: float) -> FloatArray:
        """RAS mm of the centreline at arc length s."""
        return np.array([np.interp(s, self.s, self.xyz[:, k]) for k in range(3)])

    def frame(self, s: float) -> tuple[FloatArray, FloatArray]:
        """Unit vectors (up the spine, anterior) at s, both in the sagittal plane."""
        slope = float(np.clip(np.interp(s, self.s, self.dy), -0.9, 0.9))
        up = np.array([0.0, -slope, math.sqrt(1.0 - slope**2)])
        return up, np.array([0.0, up[2], -up[1]])


def _level_frame(line: _Centreline, index: int, s: float, sizes: dict[str, float]) -> _Frame:
    up, anterior = line.frame(s)
    origin = line.point(s)
    z = sizes
    reach = max(
        z["body_rx"],
        z["canal_rx"] + z["arch_t"] + z["transverse_len"] + 4,
        z["body_ra"] + 2 * z["canal_ra"] + 2 * z["arch_t"] + z["spinous_len"] + 6,
    )
    radius = math.hypot(reach, z["body_h"] * (1.5 if index == 1 else 0.5) + 2) + 3
    return _Frame(SPINE[index].id, index, origin, up, anterior, sizes, radius, origin)


def _sacrum_frame(
    line: _Centreline, s: float, sizes: dict[str, float], anatomy: _Anatomy
) -> _Frame:
    """The sacrum's frame: origin at the centre of its top plate, tilted back at the bottom."""
    up, anterior = line.frame(s)
    tilt = math.radians(anatomy.sacrum_tilt_deg)
    up, anterior = (
        math.cos(tilt) * up + math.sin(tilt) * anterior,
        math.cos(tilt) * anterior - math.sin(tilt) * up,
    )
    sizes = {
        **sizes,
        "length": 100 * anatomy.scale,
        "half_width": 50 * anatomy.scale,
        "half_depth": 22 * anatomy.scale,
    }
    origin = line.point(s)
    centre = origin - up * sizes["length"] / 2
    radius = math.hypot(sizes["length"] / 2, sizes["half_width"]) + 3
    return _Frame(SPINE[-1].id, _SACRUM_INDEX, origin, up, anterior, sizes, radius, centre)


def _disc_frame(
    line: _Centreline, index: int, s: float, above: dict[str, float], below: dict[str, float]
) -> _Frame:
    up, anterior = line.frame(s)
    sizes = {
        "rx": 0.97 * (above["body_rx"] + below["body_rx"]) / 2,
        "ra": 0.97 * (above["body_ra"] + below["body_ra"]) / 2,
        "half_h": above["disc_h"] / 2 + 1.5,  # overlaps the bodies; fills only unlabelled voxels
    }
    origin = line.point(s)
    radius = math.hypot(max(sizes["rx"], sizes["ra"]), sizes["half_h"]) + 2
    return _Frame(0, index, origin, up, anterior, sizes, radius, origin)


def _torso_profiles(
    levels: list[_Frame], anatomy: _Anatomy
) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Skin ellipse half-axes and centre (y) as functions of z, from the levels' sizes."""
    frames = sorted(levels[:-1], key=lambda f: f.origin[2])  # z ascending, sacrum left out
    z = np.array([f.origin[2] for f in frames])
    rx = np.array([f.sizes["torso_rx"] for f in frames]) * anatomy.torso_scale[0]
    ry = np.array([f.sizes["torso_ry"] for f in frames]) * anatomy.torso_scale[1]
    back = np.array([_back_depth(f) for f in frames])
    spine_y = np.array([f.origin[1] for f in frames])
    return {"rx": (z, rx), "ry": (z, ry), "cy": (z, spine_y - back + ry)}


def _back_depth(frame: _Frame) -> float:
    """Distance from the body centre back to the skin: arch, spinous process, muscle."""
    z = frame.sizes
    drop = math.radians(z["spinous_drop_deg"])
    return (
        z["body_ra"]
        + 2 * z["canal_ra"]
        + 2 * z["arch_t"]
        + z["spinous_len"] * math.cos(drop)
        + z["back_muscle"]
    )


# --- grid -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """The RAS grid: voxel centre coordinates along x, y, z and the affine."""

    xs: FloatArray
    ys: FloatArray
    zs: FloatArray
    step: tuple[float, float, float]
    spine: _Spine

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.xs), len(self.ys), len(self.zs)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.step

    @property
    def affine(self) -> FloatArray:
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.xs[0], self.ys[0], self.zs[0]
        return affine

    def torso(self, name: str) -> FloatArray:
        """A torso profile sampled at this grid's z."""
        z, value = self.spine.torso[name]
        return np.interp(self.zs, z, value)

    @staticmethod
    def fit(spec: PhantomSpec, spine: _Spine, first: int, last: int) -> _Grid:
        """The grid covering levels first..last plus margin, and the body in-plane."""
        sx, sy, sz = _ras_spacing(spec)
        top = _extent_z(spine.levels[first])[1] + spec.margin_mm
        bottom = _extent_z(spine.levels[last])[0] - spec.margin_mm
        zs = _axis(bottom, top, sz)
        probe = _Grid(np.zeros(1), np.zeros(1), zs, (sx, sy, sz), spine)
        rx, ry, cy = probe.torso("rx"), probe.torso("ry"), probe.torso("cy")
        if spec.fov_mm is None:
            half_x = float(rx.max()) + 10
            y_lo, y_hi = float((cy - ry).min()) - 10, float((cy + ry).max()) + 10
        else:
            half_x = spec.fov_mm[0] / 2
            y_mid = float(np.median(cy))
            y_lo, y_hi = y_mid - spec.fov_mm[1] / 2, y_mid + spec.fov_mm[1] / 2
        return _Grid(_axis(-half_x, half_x, sx), _axis(y_lo, y_hi, sy), zs, (sx, sy, sz), spine)

    def box(self, frame: _Frame) -> tuple[slice, slice, slice] | None:
        """Index ranges of the voxels within the frame's radius of its box centre."""
        slices = []
        axes = (self.xs, self.ys, self.zs)
        for axis, step, centre in zip(axes, self.step, frame.box_centre, strict=True):
            lo = max(math.floor((centre - frame.radius - axis[0]) / step), 0)
            hi = min(math.ceil((centre + frame.radius - axis[0]) / step) + 1, len(axis))
            if lo >= hi:
                return None
            slices.append(slice(lo, hi))
        return slices[0], slices[1], slices[2]

    def local(self, frame: _Frame, box: tuple[slice, slice, slice]) -> _Local:
        """Coordinates of the box's voxels in the frame: right, anterior, up (mm)."""
        dx = (self.xs[box[0]] - frame.origin[0])[:, None, None]
        dy = (self.ys[box[1]] - frame.origin[1])[None, :, None]
        dz = (self.zs[box[2]] - frame.origin[2])[None, None, :]
        up, ant = frame.up, frame.anterior
        return _Local(r=dx, a=dy * ant[1] + dz * ant[2], u=dy * up[1] + dz * up[2])


def _axis(lo: float, hi: float, step: float) -> FloatArray:
    count = math.ceil((hi - lo) / step) + 1
    return lo + step * np.arange(count, dtype=np.float64)


def _extent_z(frame: _Frame) -> tuple[float, float]:
    """z range of a level's body (the sacrum's whole wedge)."""
    if frame.index == _SACRUM_INDEX:
        tip = frame.origin - frame.up * frame.sizes["length"]
        depth = frame.anterior[2] * frame.sizes["half_depth"]
        zs = [frame.origin[2] + depth, frame.origin[2] - depth, tip[2]]
        return min(zs), max(zs)
    half = frame.sizes["body_h"] / 2 * frame.up[2] + frame.sizes["body_ra"] * abs(frame.up[1])
    return frame.origin[2] - half, frame.origin[2] + half


@dataclass(frozen=True)
class _Local:
    """Voxel coordinates in a level frame, as broadcastable arrays (r: (n,1,1); a, u: (1,m,k))."""

    r: FloatArray
    a: FloatArray
    u: FloatArray


# --- drawing ----------------------------------------------------------------------------------


def _inside_ellipse(
    x: RealArray, y: RealArray, hx: float | RealArray, hy: float | RealArray
) -> BoolArray:
    """Whether (x, y) lies in the ellipse of half-axes (hx, hy) centred at 0 (broadcasting)."""
    return np.asarray((x / hx) ** 2 + (y / hy) ** 2 <= 1.0)


def _paint_torso(grid: _Grid, spine: _Spine) -> npt.NDArray[np.uint8]:
    """Tissue map of the torso: air, subcutaneous fat, soft tissue and, in the thorax, lungs."""
    rx, ry, cy = grid.torso("rx"), grid.torso("ry"), grid.torso("cy")
    x = grid.xs.astype(np.float32)[:, None, None]
    y = (grid.ys[None, :, None] - cy[None, None, :]).astype(np.float32)
    tissues = np.full(grid.shape, Tissue.AIR, dtype=np.uint8)
    tissues[_inside_ellipse(x, y, rx, ry)] = Tissue.FAT
    fat = _fat_thickness(rx)
    tissues[_inside_ellipse(x, y, rx - fat, ry - fat)] = Tissue.SOFT
    lung = _lung_scale(grid.zs, spine)
    if np.any(lung > 0):
        lung_y = y + (0.05 * ry).astype(np.float32)
        for side in (-1.0, 1.0):
            inside = _inside_ellipse(
                x - side * 0.5 * rx, lung_y, 0.3 * rx * lung + 1e-6, 0.62 * ry * lung + 1e-6
            )
            tissues[inside & (lung > 0)] = Tissue.LUNG
    return tissues


def _fat_thickness(rx: FloatArray) -> FloatArray:
    """Subcutaneous fat, thinner in the neck than in the trunk (scaled by the torso width)."""
    return np.clip(rx * 0.12, 5.0, 30.0)


def _lung_scale(zs: FloatArray, spine: _Spine) -> FloatArray:
    """0..1 lung size along z: from above T1 down to T10, with rounded apex and base."""
    top = spine.levels[7].origin[2] + 35.0
    bottom = spine.levels[16].origin[2]
    rise = np.clip(np.minimum((top - zs) / 30.0, (zs - bottom) / 40.0), 0.0, 1.0)
    return np.sqrt(rise)


def _draw_vertebra(
    grid: _Grid, frame: _Frame, label_map: npt.NDArray[np.uint8], tissues: npt.NDArray[np.uint8]
) -> None:
    """Label one level where no earlier level is, and paint its cortical shell and core."""
    box = grid.box(frame)
    if box is None:
        return
    p = grid.local(frame, box)
    mask = _vertebra_mask(frame, p) & (label_map[box] == 0)
    if not mask.any():
        return
    shell = mask & ~ndimage.binary_erosion(mask)
    label_map[box][mask] = frame.label
    sub = tissues[box]
    sub[mask] = Tissue.CANCELLOUS
    sub[shell] = Tissue.CORTICAL


def _draw_disc(
    grid: _Grid, frame: _Frame, label_map: npt.NDArray[np.uint8], tissues: npt.NDArray[np.uint8]
) -> None:
    """Paint a disc (not labelled) where no vertebra is."""
    box = grid.box(frame)
    if box is None:
        return
    p = grid.local(frame, box)
    z = frame.sizes
    disc = _inside_ellipse(p.r, p.a, z["rx"], z["ra"]) & (np.abs(p.u) <= z["half_h"])
    tissues[box][disc & (label_map[box] == 0)] = Tissue.DISC


def _vertebra_mask(frame: _Frame, p: _Local) -> BoolArray:
    if frame.index == _SACRUM_INDEX:
        return _sacrum(p, frame.sizes)
    z = frame.sizes
    core = _atlas_ring(p, z) if frame.index == 0 else _body(p, z) | _arch(p, z)
    if frame.index == 1:
        core = core | _dens(p, z)
    return core | _spinous(p, z) | _transverse(p, z)


def _canal_centre(z: Mapping[str, float]) -> float:
    """Anterior coordinate of the canal centre: just behind the body, overlapping its back."""
    return -(z["body_ra"] + z["canal_ra"] - 1.0)


def _body(p: _Local, z: Mapping[str, float]) -> BoolArray:
    return _inside_ellipse(p.r, p.a, z["body_rx"], z["body_ra"]) & (np.abs(p.u) <= z["body_h"] / 2)


def _arch(p: _Local, z: Mapping[str, float]) -> BoolArray:
    """Pedicles and lamina: an elliptic ring around the canal, behind the body."""
    a = p.a - _canal_centre(z)
    t = z["arch_t"]
    ring = _inside_ellipse(p.r, a, z["canal_rx"] + t, z["canal_ra"] + t) & ~_inside_ellipse(
        p.r, a, z["canal_rx"], z["canal_ra"]
    )
    return ring & (p.a < -0.6 * z["body_ra"]) & (np.abs(p.u) <= 0.35 * z["body_h"])


def _atlas_ring(p: _Local, z: Mapping[str, float]) -> BoolArray:
    """C1: one ring from the front of the (absent) body to the back of the canal."""
    front = z["body_ra"]
    back = _canal_centre(z) - z["canal_ra"] - z["arch_t"]
    mid, half_a = (front + back) / 2, (front - back) / 2
    half_x = z["canal_rx"] + z["arch_t"] + 2.0
    a = p.a - mid
    ring = _inside_ellipse(p.r, a, half_x, half_a) & ~_inside_ellipse(
        p.r, a, half_x - 9, half_a - 5
    )
    return ring & (np.abs(p.u) <= z["body_h"] / 2)


def _dens(p: _Local, z: Mapping[str, float]) -> BoolArray:
    """C2's dens: a peg rising from the body into the front of C1's ring."""
    radius = 0.45 * z["body_ra"]
    centre = z["body_ra"] - 5.0 - radius - 1.0
    top = z["body_h"] / 2 + z["body_h"]
    return _inside_ellipse(p.r, p.a - centre, radius, radius) & (p.u >= 0) & (p.u <= top)


def _rod(
    t: FloatArray, n1: FloatArray, n2: FloatArray, *, length: float, h1: float, h2: float
) -> BoolArray:
    """A rod of elliptic section along t in [0, length], half-axes h1, h2 across it."""
    return (t >= 0) & (t <= length) & _inside_ellipse(n1, n2, h1, h2)


def _spinous(p: _Local, z: Mapping[str, float]) -> BoolArray:
    """Spinous process: from the back of the lamina, backwards and sloping down."""
    a = p.a - (_canal_centre(z) - z["canal_ra"] - 0.5 * z["arch_t"])
    drop = math.radians(z["spinous_drop_deg"])
    along = -a * math.cos(drop) - p.u * math.sin(drop)
    across = a * math.sin(drop) - p.u * math.cos(drop)
    height = max(3.0, 0.3 * z["body_h"])
    return _rod(
        along, across, p.r, length=z["spinous_len"], h1=height, h2=1.5 + 0.15 * z["body_rx"]
    )


def _transverse(p: _Local, z: Mapping[str, float]) -> BoolArray:
    """Transverse processes: from the sides of the arch, outwards and swept back."""
    back = math.radians(z["transverse_back_deg"])
    a = p.a - _canal_centre(z)
    result = np.zeros(np.broadcast_shapes(p.r.shape, p.a.shape), dtype=bool)
    for side in (-1.0, 1.0):
        r = p.r - side * (z["canal_rx"] + 0.5 * z["arch_t"])
        along = side * r * math.cos(back) - a * math.sin(back)
        across = side * r * math.sin(back) + a * math.cos(back)
        result |= _rod(along, across, p.u, length=z["transverse_len"], h1=3.5, h2=3.5)
    return result


def _sacrum(p: _Local, z: Mapping[str, float]) -> BoolArray:
    """A wedge below L5: an elliptic section narrowing from the top plate to the tip."""
    down = -p.u / z["length"]
    half_x = z["half_width"] * (1.0 - 0.75 * np.clip(down, 0, 1))
    half_a = z["half_depth"] * (1.0 - 0.55 * np.clip(down, 0, 1))
    a = p.a + 0.2 * z["half_depth"] * down
    return (down >= 0) & (down <= 1) & _inside_ellipse(p.r, a, half_x, half_a)


# --- CT ---------------------------------------------------------------------------------------


def _render_ct(
    tissues: npt.NDArray[np.uint8],
    anatomy: _Anatomy,
    grid: _Grid,
    spec: PhantomSpec,
    rng: np.random.Generator,
) -> npt.NDArray[np.int16]:
    """HU from tissue classes, a slight blur (scanner resolution), Gaussian noise, as int16."""
    table = np.array([anatomy.hu[t] for t in Tissue], dtype=np.float32)
    ct = table[tissues]
    if spec.blur_mm > 0:
        sigma = [spec.blur_mm / s for s in grid.spacing]
        ct = ndimage.gaussian_filter(ct, sigma=sigma, mode="nearest", truncate=3.0)
    if spec.noise_hu > 0:
        ct += rng.standard_normal(ct.shape, dtype=np.float32) * np.float32(spec.noise_hu)
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)

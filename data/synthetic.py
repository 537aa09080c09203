"""Synthetic street scenes with exact labels: training and checking without a dataset or a download.

A scene is a pinhole camera (random focal length, height, yaw, roll and horizon) looking down a straight
street: a road with lane markings, crossings and repairs; sidewalks with curbs and paving joints, sometimes
a grass verge; both sides lined with building facades (windows, shop fronts, cornices, set-backs with
front gardens) or parks (grass, bushes, trees, a tree line); a hazy skyline; and, in the street, vehicles,
persons, street lights, sign posts and street trees, whose size follows their depth. Everything is drawn
back to front (painter's algorithm), so nearer things occlude farther ones, objects leave the frame, and
cars hide persons and the road.

Label and image are drawn together: every primitive writes its colour and its class in the same call
(``_Canvas.fill``), so a label pixel is always the class of the last thing drawn there. What follows the
drawing only changes colours: per-class textures, building and contact shadows, global brightness,
contrast and colour cast, vignetting, lens blur and sensor noise. Colours overlap between classes on
purpose (grey cars on grey asphalt, green grass beside green trees, beige sidewalks beside dry grass), so a
model has to use shape, texture and context, not colour alone.

Ignore index: the labels never contain 255. Every pixel has one drawn class; the blur that softens edges
in the image is the camera's, and the label keeps the sharp geometric boundary, as a human annotator's
polygon would.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "vegetation", "sky", "vehicle", "person", "pole", "traffic sign", "terrain",
)
# Cityscapes' colours for the matching classes ("vehicle" takes car's), RGB.
SYNTHETIC_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35), (70, 130, 180),
    (0, 0, 142), (220, 20, 60), (153, 153, 153), (220, 220, 0), (152, 251, 152),
)
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, VEHICLE, PERSON, POLE, SIGN, TERRAIN = range(10)

# Who uses which seeds, so no set sees another's scenes: training below EVAL_SEED; the evaluation sets
# `python -m data` writes from EVAL_SEED; samples/ (the calibration set) from SAMPLES_SEED; the build's and
# `export check`'s parity inputs, where no folder is named, from CHECK_SEED.
EVAL_SEED, SAMPLES_SEED, CHECK_SEED = 1_000_000, 2_000_000, 3_000_000

Colour = np.ndarray  # (3,) float RGB


# Drawing ------------------------------------------------------------------------------------------------
class _Canvas:
    """Image, label and shade drawn together; points arrive in unrolled pixel coordinates (float)."""

    SHIFT = 4  # cv2 fixed-point bits: far poles a fraction of a pixel wide still rasterize consistently

    def __init__(self, h: int, w: int, roll: float) -> None:
        self.h, self.w = h, w
        self.image = np.empty((h, w, 3), np.uint8)
        self.label = np.empty((h, w), np.uint8)
        self.shade = np.full((h, w), 255, np.uint8)  # 255 = lit; shadows multiply the image by shade / 255
        self.shaded = False
        # Roll about the image centre, then scale to cv2's fixed point, as one affine map on row vectors.
        c, s, k = np.cos(roll), np.sin(roll), float(1 << self.SHIFT)
        self._rot = np.array([[c, s], [-s, c]]) * k
        centre = np.array([w / 2, h / 2])
        self._offset = centre * k - centre @ self._rot

    def _fixed(self, points: np.ndarray) -> np.ndarray:
        p = points @ self._rot
        p += self._offset
        return np.rint(p, out=p).astype(np.int32)

    def fill(self, points: np.ndarray, cls: int, colour, shade: int = 255) -> None:
        """Fill one polygon (K, 2) or many (N, K, 2) with a colour and a class; the pixels become lit by
        ``shade`` (a later object is not under an earlier shadow unless it stands in it)."""
        pts = self._fixed(points)
        pts = [pts] if pts.ndim == 2 else pts
        if len(pts) == 0:
            return
        cv2.fillPoly(self.image, pts, tuple(np.asarray(colour, np.float64).tolist()), cv2.LINE_8, self.SHIFT)
        cv2.fillPoly(self.label, pts, int(cls), cv2.LINE_8, self.SHIFT)
        if self.shaded or shade != 255:  # until the first shadow, the shade map is all 255 anyway
            cv2.fillPoly(self.shade, pts, int(shade), cv2.LINE_8, self.SHIFT)
            self.shaded = True

    def shadow(self, points: np.ndarray, shade: int) -> None:
        """Darken what is already drawn under a polygon, without changing its class."""
        pts = self._fixed(points)
        cv2.fillPoly(self.shade, [pts] if pts.ndim == 2 else pts, int(shade), cv2.LINE_8, self.SHIFT)
        self.shaded = True


@functools.lru_cache(maxsize=None)
def _circle(n: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], 1)


def _blob(rng: np.random.Generator, n: int = 14, jitter: float = 0.25) -> np.ndarray:
    """A unit circle with a ragged outline, (n, 2): tree crowns, bushes, clouds."""
    return _circle(n) * (1 + rng.uniform(-jitter, jitter, (n, 1)))


def _quad(a, b, c, d) -> np.ndarray:
    """Four corner values, (4,), or (N, 4) when any is an array of N."""
    shape = next((v.shape for v in (a, b, c, d) if isinstance(v, np.ndarray) and v.ndim), None)
    if shape is None:
        return np.array([a, b, c, d], np.float64)
    out = np.empty(shape + (4,))
    out[..., 0], out[..., 1], out[..., 2], out[..., 3] = a, b, c, d
    return out


# Colours may leave 0..255 on the way: cv2 saturates them when it draws.
def _jitter(rng: np.random.Generator, rgb, amount: float = 12.0) -> Colour:
    return np.asarray(rgb, np.float64) + rng.uniform(-amount, amount, 3)


def _scale(rgb, k: float) -> Colour:
    return np.asarray(rgb, np.float64) * k


def _mix(a, b, t: float) -> Colour:
    return np.asarray(a, np.float64) * (1 - t) + np.asarray(b, np.float64) * t


# Scene --------------------------------------------------------------------------------------------------
class _Scene:
    """One street: the camera, the street's cross-section, its colours, and the canvas being drawn on.

    World coordinates in metres: X to the right, Y up from the ground, Z forward from the camera.
    """

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.rng, self.h, self.w = rng, h, w
        # Camera: the yaw moves the vanishing point sideways; the roll tilts the horizon.
        self.f = w * rng.uniform(0.55, 0.85)
        self.cx = w * (0.5 + rng.uniform(-0.12, 0.12))
        self.horizon = h * rng.uniform(0.33, 0.55)
        self.cam_h = rng.uniform(1.2, 1.9)
        self.canvas = _Canvas(h, w, np.deg2rad(rng.uniform(-3, 3)) if rng.random() < 0.6 else 0.0)
        self.z_bottom = self.f * self.cam_h / (h - self.horizon)  # the ground depth at the bottom row
        self.z_near = 0.4 * self.z_bottom

        # Cross-section: road, optional grass verge, sidewalk, per side (-1 left, +1 right).
        width = rng.uniform(6, 16)
        cam_x = rng.uniform(1.0, width - 1.0)
        self.road = (-cam_x, width - cam_x)
        self.lanes = max(1, int(round(width / 3.4)))
        self.verge, self.walk = {}, {}  # side -> (inner X, outer X)
        for side in (-1, 1):
            edge = self.road[0] if side < 0 else self.road[1]
            verge = rng.uniform(0.8, 2.5) if rng.random() < 0.3 else 0.0
            inner = edge + side * verge
            self.verge[side] = (edge, inner)
            self.walk[side] = (inner, inner + side * rng.uniform(1.5, 5.0))

        # Colours, chosen so that classes overlap: grey road, grey buildings, grey cars; green grass and trees.
        g = rng.uniform(55, 135)
        self.road_rgb = _jitter(rng, (g, g, g + 4), 6)
        self.walk_rgb = (_jitter(rng, [rng.uniform(105, 195)] * 3, 8) if rng.random() < 0.6
                         else _jitter(rng, (rng.uniform(140, 200), rng.uniform(110, 160), rng.uniform(90, 140)), 8))
        self.terrain_rgb = [(95, 140, 60), (155, 140, 90), (120, 100, 75), (120, 150, 70)][int(rng.integers(4))]
        self.terrain_rgb = _jitter(rng, self.terrain_rgb, 25)
        self.green = (_jitter(rng, (60, 105, 45), 30) if rng.random() < 0.85
                      else _jitter(rng, (150, 120, 45), 30))  # autumn
        self.sunny = rng.random() < 0.65
        self.sun_side = int(rng.choice([-1, 1]))  # whose buildings shade the street
        self.sun_shade = int(255 * rng.uniform(0.4, 0.7))
        self.shadow_len = rng.uniform(0.3, 1.3)  # shadow length per metre of building height
        self.shadow_dz = rng.uniform(-6, 6)  # how far the sun shifts shadows along the street
        self.sun_shadows: list[tuple[float, float, float, float]] = []  # ground rectangles (X0, X1, Z0, Z1)
        self.sky_bottom = np.zeros(3)  # set with the sky; distant things fade towards it

    # Projection (unrolled pixel coordinates; the canvas applies the roll)
    def project(self, X, Y, Z) -> np.ndarray:
        # Depths are clamped at 0.3 m: such points lie far outside the frame, and coordinates stay small
        # enough for cv2's fixed-point rasterizer.
        inv = self.f / np.maximum(np.asarray(Z, np.float64), 0.3)
        x = self.cx + np.asarray(X, np.float64) * inv
        y = self.horizon + (self.cam_h - np.asarray(Y, np.float64)) * inv
        out = np.empty((x.shape if x.shape == y.shape else np.broadcast_shapes(x.shape, y.shape)) + (2,))
        out[..., 0], out[..., 1] = x, y
        return out

    def ground(self, x0, x1, z0, z1) -> np.ndarray:
        """A rectangle on the ground; arrays of corners give (N, 4, 2)."""
        return self.project(_quad(x0, x1, x1, x0), 0.0, _quad(z0, z0, z1, z1))

    def upright(self, x0, x1, y0, y1, z) -> np.ndarray:
        """A rectangle facing the camera at depth z."""
        return self.project(_quad(x0, x1, x1, x0), _quad(y0, y0, y1, y1), z)

    def along(self, x, z0, z1, y0, y1) -> np.ndarray:
        """A rectangle in the plane X = x running away from the camera (a facade); arrays give (N, 4, 2)."""
        return self.project(x, _quad(y0, y0, y1, y1), _quad(z0, z1, z1, z0))

    def upright_blob(self, x, y, z, rx, ry, jitter=0.25, n=14) -> np.ndarray:
        """A ragged ellipse facing the camera at depth z: crowns, bushes, heads."""
        b = _blob(self.rng, n, jitter)
        return self.project(x + b[:, 0] * rx, y + b[:, 1] * ry, z)

    def ground_blob(self, x, z, rx, rz, jitter=0.2, n=14) -> np.ndarray:
        """A ragged ellipse on the ground: patches, manholes, shadows."""
        b = _blob(self.rng, n, jitter)
        return self.project(x + b[:, 0] * rx, 0.0, z + b[:, 1] * rz)

    def visible_from(self, x: float, margin: float = 4.0) -> float:
        """The depth beyond which a point at lateral position ``x`` is inside the frame."""
        room = (self.w - self.cx if x > 0 else self.cx) - margin
        return self.f * abs(x) / max(room, 1.0)

    def depth(self, lo: float, hi: float) -> float:
        """A depth in [lo, hi], log-uniform: as many objects near as far, so sizes vary widely."""
        lo = max(lo, 0.5)
        return float(np.exp(self.rng.uniform(np.log(lo), np.log(max(hi, lo * 1.01)))))

    def shade_at(self, x: float, z: float) -> int:
        """How lit a thing standing at (x, z) is: in a building's shadow or not."""
        for x0, x1, z0, z1 in self.sun_shadows:
            if x0 <= x <= x1 and z0 <= z <= z1:
                return self.sun_shade
        return 255


# Background: sky, skyline, far ground --------------------------------------------------------------------
def _draw_sky(s: _Scene) -> None:
    rng, c = s.rng, s.canvas
    mode = rng.choice(3, p=[0.55, 0.3, 0.15])
    if mode == 0:  # clear
        top = np.array([rng.uniform(35, 90), rng.uniform(90, 150), rng.uniform(170, 240)])
        bottom = np.clip(top + rng.uniform(50, 110), 0, 255)
    elif mode == 1:  # overcast
        g = rng.uniform(145, 215)
        top, bottom = _jitter(rng, (g - 10, g - 5, g + 5), 8), _jitter(rng, (g + 15, g + 15, g + 18), 8)
    else:  # dusk
        top = np.array([rng.uniform(60, 110), rng.uniform(70, 110), rng.uniform(130, 180)])
        bottom = np.array([rng.uniform(200, 250), rng.uniform(120, 180), rng.uniform(80, 130)])
    s.sky_bottom = bottom
    t = np.clip(np.arange(s.h) / max(s.horizon, 1.0), 0, 1) ** rng.uniform(0.6, 1.5)
    column = np.clip(top + t[:, None] * (bottom - top), 0, 255).astype(np.uint8)[:, None, :]  # (H, 1, 3)
    c.image[:] = cv2.resize(column, (s.w, s.h), interpolation=cv2.INTER_NEAREST)
    c.label[:] = SKY
    for _ in range(int(rng.integers(0, 6))):  # clouds
        cx, cy = rng.uniform(0, s.w), rng.uniform(-0.1, 0.8) * s.horizon
        rx = rng.uniform(0.05, 0.25) * s.w
        pts = np.array([cx, cy]) + _blob(rng, 16, 0.3) * [rx, rx * rng.uniform(0.15, 0.4)]
        c.fill(pts, SKY, _mix(bottom, (245, 245, 248) if mode != 1 else (120, 120, 128), rng.uniform(0.3, 0.8)))


def _draw_skyline(s: _Scene) -> None:
    """The far ground below the horizon, then far buildings and tree lines along it, hazy with distance."""
    rng, c = s.rng, s.canvas
    big = 4.0 * max(s.w, s.h)
    c.fill(np.array([[-big, s.horizon], [big, s.horizon], [big, big], [-big, big]]), TERRAIN,
           _mix(s.terrain_rgb, s.sky_bottom, 0.4))
    base = s.horizon + 3
    x = -0.3 * s.w
    while x < 1.3 * s.w:
        bw = rng.uniform(0.03, 0.12) * s.w
        haze = rng.uniform(0.35, 0.7)
        if rng.random() < 0.7:
            top = base - s.f * rng.uniform(0.01, 0.12)
            colour = _mix(_jitter(rng, (120, 115, 110), 50), s.sky_bottom, haze)
            c.fill(np.array([[x, base], [x + bw, base], [x + bw, top], [x, top]]), BUILDING, colour)
        else:
            n = 8
            xs = np.linspace(x, x + bw, n)
            tops = base - s.f * rng.uniform(0.008, 0.035, n)
            pts = np.concatenate([np.stack([xs, tops], 1), [[x + bw, base], [x, base]]])
            c.fill(pts, VEGETATION, _mix(s.green, s.sky_bottom, haze * 0.7))
        x += bw


# The street: road, verges, sidewalks ---------------------------------------------------------------------
def _draw_street(s: _Scene) -> None:
    rng, c = s.rng, s.canvas
    zn, zf = s.z_near, 3000.0
    r0, r1 = s.road
    c.fill(s.ground(r0, r1, zn, zf), ROAD, s.road_rgb)
    for _ in range(int(rng.integers(0, 5))):  # repaired patches: road, only a different tone
        x = rng.uniform(r0, r1)
        z = s.depth(s.z_near, 60)
        c.fill(s.ground(x, min(r1, x + rng.uniform(0.8, 4)), z, z + rng.uniform(1, 8)), ROAD,
               _scale(s.road_rgb, rng.uniform(0.75, 1.25)))
    if rng.random() < 0.4:  # a manhole cover
        c.fill(s.ground_blob(rng.uniform(r0 + 1, r1 - 1), s.depth(s.z_bottom, 30), 0.35, 0.35, 0.0, 16), ROAD,
               _scale(s.road_rgb, 0.6))

    paint = _jitter(rng, (225, 225, 220), 20) * rng.uniform(0.7, 1.0)  # worn white paint
    lane_w = (r1 - r0) / s.lanes
    dash, gap = rng.uniform(2, 4), rng.uniform(4, 9)
    for k in range(1, s.lanes):
        xk = r0 + k * lane_w
        z0 = np.arange(zn + rng.uniform(0, dash + gap), 120, dash + gap)
        colour = (_jitter(rng, (220, 180, 40), 15) if k == s.lanes // 2 and rng.random() < 0.2 else paint)
        c.fill(s.ground(xk - 0.07, xk + 0.07, z0, z0 + dash), ROAD, colour)
    if rng.random() < 0.5:  # solid edge lines
        for x in (r0 + 0.3, r1 - 0.3):
            c.fill(s.ground(x - 0.07, x + 0.07, zn, zf), ROAD, paint)
    if rng.random() < 0.3:  # a zebra crossing
        zc = rng.uniform(max(s.z_bottom, 6), 35)
        x0 = np.arange(r0 + 0.3, r1 - 0.5, 1.0)
        c.fill(s.ground(x0, x0 + 0.5, zc, zc + 3), ROAD, paint)

    curb = _scale(s.walk_rgb, rng.uniform(0.7, 1.3))
    for side in (-1, 1):
        edge, inner = s.verge[side]
        if inner != edge:
            c.fill(s.ground(edge, inner, zn, zf), TERRAIN, s.terrain_rgb)
        a, b = s.walk[side]
        c.fill(s.ground(a, b, zn, zf), SIDEWALK, s.walk_rgb)
        c.fill(s.ground(a, a + side * 0.2, zn, zf), SIDEWALK, curb)
        tile = rng.uniform(0.8, 2.5)
        z0 = np.arange(zn, 45, tile)
        c.fill(s.ground(a + side * 0.2, b, z0, z0 + 0.05), SIDEWALK, _scale(s.walk_rgb, 0.75))


# The sides: buildings and parks ---------------------------------------------------------------------------
_FACADES = [(200, 190, 170), (160, 80, 60), (130, 130, 135), (225, 220, 210), (170, 140, 100), (100, 95, 90),
            (190, 170, 120), (90, 110, 130)]


def _segments(s: _Scene) -> list[dict]:
    """Each side of the street as consecutive stretches of building or park, out to the street's end."""
    rng = s.rng
    z_end = rng.uniform(50, 200)
    segments = []
    for side in (-1, 1):
        z = 1.0
        while z < z_end:
            length = rng.uniform(6, 35)
            kind = "park" if rng.random() < 0.22 else "building"
            segments.append({"side": side, "z0": z, "z1": min(z + length, z_end), "kind": kind})
            z += length
    has_terrain = any(seg["kind"] == "park" for seg in segments) or any(v[0] != v[1] for v in s.verge.values())
    if not has_terrain:  # make one mid-distance stretch a park, so that most scenes show some terrain
        mid = [seg for seg in segments if seg["z1"] > 12 and seg["z0"] < 45] or segments
        mid[int(rng.integers(len(mid)))]["kind"] = "park"
    return sorted(segments, key=lambda seg: -seg["z0"])  # far to near


def _draw_building(s: _Scene, side: int, z0: float, z1: float) -> None:
    rng, c = s.rng, s.canvas
    b = s.walk[side][1]
    setback = rng.uniform(0.5, 4) if rng.random() < 0.35 else 0.0
    xf = b + side * setback
    if setback:  # a front garden or a forecourt
        garden = rng.random() < 0.5
        c.fill(s.ground(b, xf, z0, z1), TERRAIN if garden else SIDEWALK,
               s.terrain_rgb if garden else _scale(s.walk_rgb, rng.uniform(0.85, 1.1)))
        if garden and rng.random() < 0.6:
            c.fill(s.along(b + side * 0.3, z0, z1, 0, rng.uniform(0.5, 1.3)), VEGETATION, _jitter(rng, s.green, 15))
    height = rng.uniform(5, 28)
    wall = _jitter(rng, _FACADES[int(rng.integers(len(_FACADES)))], 20)
    lit = rng.uniform(0.6, 0.85) if (s.sunny and side == s.sun_side) else rng.uniform(0.95, 1.15)
    wall = _scale(wall, lit)
    c.fill(s.project(np.array([xf, xf + side * 15, xf + side * 15, xf]), np.array([0, 0, height, height]), z0),
           BUILDING, _scale(wall, 0.8))  # the end wall facing the camera
    c.fill(s.along(xf, z0, z1, 0, height), BUILDING, wall)
    if rng.random() < 0.5:  # cornices: stripes along every floor
        floors = np.arange(3.2, height - 1, rng.uniform(2.9, 3.8))
        c.fill(s.along(xf, z0, z1, floors, floors + 0.25), BUILDING, _scale(wall, rng.uniform(0.7, 1.2)))
    # Windows: a grid on the facade, framed, some lit.
    floor_h, spacing = rng.uniform(2.8, 3.8), rng.uniform(2.2, 4.0)
    win_w, win_h = rng.uniform(0.35, 0.7) * spacing, rng.uniform(0.4, 0.65) * floor_h
    ys = np.arange(floor_h + 0.8, height - win_h - 0.3, floor_h)
    zs = np.arange(z0 + rng.uniform(0.5, spacing), z1 - win_w, spacing)
    if len(ys) and len(zs):
        zz, yy = (v.ravel() for v in np.meshgrid(zs, ys))
        frame = _jitter(rng, (220, 215, 205), 30) if rng.random() < 0.5 else _scale(wall, 0.6)
        c.fill(s.along(xf, zz - 0.1, zz + win_w + 0.1, yy - 0.1, yy + win_h + 0.1), BUILDING, frame)
        glass = _jitter(rng, (50, 60, 75), 25) if rng.random() < 0.7 else _mix(s.sky_bottom, (40, 40, 50), 0.4)
        bright = rng.random(len(zz)) < rng.uniform(0.0, 0.3)
        c.fill(s.along(xf, zz[~bright], zz[~bright] + win_w, yy[~bright], yy[~bright] + win_h), BUILDING, glass)
        c.fill(s.along(xf, zz[bright], zz[bright] + win_w, yy[bright], yy[bright] + win_h), BUILDING,
               _jitter(rng, (200, 180, 120), 30))
    if rng.random() < 0.5:  # a shop front: dark glass between pillars
        bays = np.arange(z0 + 0.6, z1 - 2.5, 3.0)
        c.fill(s.along(xf, bays, bays + 2.4, 0.3, 2.6), BUILDING, _jitter(rng, (40, 45, 50), 20))
    if s.sunny and side == s.sun_side:  # the building's shadow across the street, up to the far sidewalk's edge
        lo, hi = s.walk[-1][1], s.walk[1][1]
        x0, x1 = np.clip([b, xf - side * height * s.shadow_len], lo, hi)
        s.sun_shadows.append((min(x0, x1), max(x0, x1), z0 + s.shadow_dz, z1 + s.shadow_dz))


def _draw_park(s: _Scene, side: int, z0: float, z1: float) -> None:
    rng, c = s.rng, s.canvas
    b = s.walk[side][1]
    depth = rng.uniform(10, 25)
    c.fill(s.ground(b, b + side * (depth + 5), z0, z1), TERRAIN, s.terrain_rgb)
    for _ in range(int(rng.integers(0, 3))):  # paths and bare patches: still terrain
        z = rng.uniform(z0, z1)
        x = b + side * rng.uniform(1, depth)
        c.fill(s.ground_blob(x, z, rng.uniform(1, 4), rng.uniform(1, 5)), TERRAIN, _jitter(rng, (150, 130, 100), 20))
    # The tree line at the back, with a ragged top.
    n = max(3, int((z1 - z0) / 2))
    zs = np.linspace(z0, z1, n)
    tops = np.clip(np.cumsum(rng.normal(0, 1.0, n)) + rng.uniform(3, 9), 1.5, 14)
    xb = b + side * depth
    pts = np.concatenate([s.project(xb, 0.0, np.array([z0, z1])), s.project(xb, tops[::-1], zs[::-1])])
    c.fill(pts, VEGETATION, _jitter(rng, s.green, 20))
    things = [(rng.uniform(z0, z1), "tree") for _ in range(int(rng.integers(0, 4)))]
    things += [(rng.uniform(z0, z1), "bush") for _ in range(int(rng.integers(0, 4)))]
    for z, kind in sorted(things, reverse=True):
        # Far enough from the sidewalk that a crown never reaches over the street, where it would be drawn
        # behind things that stand in front of it.
        x = b + side * rng.uniform(4.5, depth - 2)
        if kind == "tree":
            _draw_tree(s, x, z)
        else:
            r = rng.uniform(0.5, 1.4)
            c.fill(s.upright_blob(x, r * 0.6, z, r * 1.3, r * 0.7, 0.3), VEGETATION, _jitter(rng, s.green, 25))
    if rng.random() < 0.3:  # a low hedge along the sidewalk
        c.fill(s.along(b + side * 0.3, z0, z1, 0, rng.uniform(0.6, 1.2)), VEGETATION, _jitter(rng, s.green, 15))


# Things in the street ------------------------------------------------------------------------------------
def _draw_tree(s: _Scene, x: float, z: float) -> None:
    rng, c = s.rng, s.canvas
    trunk_h, r = rng.uniform(1.8, 4.0), rng.uniform(1.2, 3.2)
    shade = s.shade_at(x, z)
    if s.sunny and rng.random() < 0.6:  # its shadow on the ground
        c.shadow(s.ground_blob(x - s.sun_side * r, z + s.shadow_dz * 0.2, r, r * 0.8), s.sun_shade)
    c.fill(s.upright(x - 0.12, x + 0.12, 0, trunk_h + r * 0.5, z), VEGETATION, _jitter(rng, (90, 70, 50), 20), shade)
    for _ in range(int(rng.integers(1, 4))):  # the crown as a few overlapping clumps
        dx, dy = rng.uniform(-0.4, 0.4) * r, rng.uniform(-0.3, 0.3) * r
        k = rng.uniform(0.6, 1.0)
        c.fill(s.upright_blob(x + dx, trunk_h + r + dy, z, r * k, r * k * rng.uniform(0.8, 1.2), 0.3, 18),
               VEGETATION, _jitter(rng, s.green, 20), shade)


_CAR_COLOURS = [(235, 235, 235), (25, 25, 28), (150, 152, 155), (90, 92, 95), (160, 25, 25), (30, 50, 120),
                (40, 70, 50), (220, 190, 40), (120, 90, 60), (200, 200, 205)]


def _draw_vehicle(s: _Scene, x: float, z: float) -> None:
    rng, c = s.rng, s.canvas
    big = rng.random() < 0.15
    if big:  # truck or bus
        w, h, length = rng.uniform(2.3, 2.6), rng.uniform(2.8, 3.6), rng.uniform(7, 12)
    else:  # car, van or SUV
        w, h, length = rng.uniform(1.6, 1.95), rng.uniform(1.35, 2.0), rng.uniform(3.8, 5.0)
    body = _jitter(rng, _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))], 15)
    glass = _jitter(rng, (35, 40, 48), 12)
    tyre = _jitter(rng, (22, 22, 24), 5)
    shade = s.shade_at(x, z)
    c.shadow(s.ground(x - w * 0.55, x + w * 0.55, z - 0.2, z + length), int(255 * rng.uniform(0.3, 0.5)))
    belt = h if big else h * rng.uniform(0.5, 0.6)  # top of the body; a car's cabin sits above
    # The side the camera sees, receding to the vanishing point.
    xs = x - w / 2 if x - w / 2 > 0 else x + w / 2 if x + w / 2 < 0 else None
    if xs is not None:
        side_rgb = _scale(body, 0.8)
        c.fill(s.along(xs, z, z + length, 0.3, belt), VEHICLE, side_rgb, shade)
        if not big:
            cab = s.project(xs, np.array([belt, belt, h, h]), z + length * np.array([0.2, 0.85, 0.7, 0.35]))
            c.fill(cab, VEHICLE, glass, shade)
        wheel = _blob(rng, 12, 0.0)
        r = 0.33 if not big else 0.5
        for zc in (z + length * 0.18, z + length * 0.82):
            c.fill(s.project(xs, r + wheel[:, 1] * r, zc + wheel[:, 0] * r), VEHICLE, tyre, shade)
    # The back (or front) facing the camera.
    for dx in (-w / 2 + 0.1, w / 2 - 0.4):
        c.fill(s.upright(x + dx, x + dx + 0.3, 0, 0.45, z), VEHICLE, tyre, shade)
    c.fill(s.upright(x - w / 2, x + w / 2, 0.28, belt, z), VEHICLE, body, shade)
    c.fill(s.upright(x - w / 2, x + w / 2, 0.28, 0.5, z), VEHICLE, _scale(body, 0.55), shade)  # bumper
    if big:
        if rng.random() < 0.5:  # a bus's rear window
            c.fill(s.upright(x - w / 2 + 0.2, x + w / 2 - 0.2, h * 0.6, h * 0.9, z), VEHICLE, glass, shade)
    else:
        cab = s.project(np.array([x - w / 2 + 0.1, x + w / 2 - 0.1, x + w / 2 - 0.3, x - w / 2 + 0.3]),
                        np.array([belt, belt, h, h]), z)
        c.fill(cab, VEHICLE, _scale(body, 0.9), shade)
        c.fill(s.project(np.array([x - w / 2 + 0.2, x + w / 2 - 0.2, x + w / 2 - 0.35, x - w / 2 + 0.35]),
                         np.array([belt + 0.05, belt + 0.05, h - 0.08, h - 0.08]), z), VEHICLE, glass, shade)
    lights = _jitter(rng, (200, 30, 30), 20) if rng.random() < 0.7 else _jitter(rng, (235, 230, 200), 15)
    for dx in (-w / 2 + 0.05, w / 2 - 0.3):
        c.fill(s.upright(x + dx, x + dx + 0.25, belt - 0.25, belt - 0.08, z), VEHICLE, lights, shade)
    c.fill(s.upright(x - 0.25, x + 0.25, 0.55, 0.68, z), VEHICLE, _jitter(rng, (230, 230, 225), 10), shade)  # plate


def _draw_person(s: _Scene, x: float, z: float) -> None:
    rng, c = s.rng, s.canvas
    h = rng.uniform(1.45, 1.95)
    shade = s.shade_at(x, z)
    skin = _jitter(rng, [(235, 200, 170), (190, 140, 100), (120, 80, 55), (90, 60, 40)][int(rng.integers(4))], 12)
    shirt = _jitter(rng, rng.uniform(20, 235, 3), 10)
    pants = _jitter(rng, [(40, 45, 70), (30, 30, 30), (120, 110, 90), (80, 80, 85)][int(rng.integers(4))], 15)
    c.shadow(s.ground_blob(x, z, 0.35, 0.25, 0.1), int(255 * rng.uniform(0.4, 0.6)))
    stride = rng.uniform(0, 0.25)
    for dx in (-stride / 2 - 0.07, stride / 2 - 0.07):  # legs
        c.fill(s.project(np.array([x + dx, x + dx + 0.14, x + 0.09, x - 0.09]),
                         np.array([0, 0, h * 0.48, h * 0.48]), z), PERSON, pants, shade)
    c.fill(s.project(np.array([x - 0.16, x + 0.16, x + 0.22, x - 0.22]),
                     np.array([h * 0.46, h * 0.46, h * 0.82, h * 0.82]), z), PERSON, shirt, shade)  # torso
    swing = rng.uniform(-0.1, 0.1)
    for sgn in (-1, 1):  # arms
        c.fill(s.project(np.array([x + sgn * 0.22, x + sgn * 0.3, x + sgn * 0.3 + swing, x + sgn * 0.22 + swing]),
                         np.array([h * 0.81, h * 0.81, h * 0.45, h * 0.45]), z), PERSON, shirt, shade)
    c.fill(s.upright_blob(x, h * 0.92, z, 0.1, 0.12, 0.0, 10), PERSON, skin, shade)  # head
    c.fill(s.upright_blob(x, h * 0.965, z, 0.105, 0.06, 0.1, 10), PERSON, _jitter(rng, (50, 35, 25), 25), shade)
    if rng.random() < 0.3:  # a bag or backpack
        sgn = rng.choice([-1, 1])
        c.fill(s.upright(x + sgn * 0.15, x + sgn * 0.42, h * 0.5, h * 0.72, z), PERSON,
               _jitter(rng, rng.uniform(20, 200, 3), 10), shade)


def _draw_pole(s: _Scene, x: float, z: float, toward_road: int) -> None:
    rng, c = s.rng, s.canvas
    h, w = rng.uniform(5.5, 9), rng.uniform(0.12, 0.25)
    colour = _jitter(rng, [(120, 120, 125), (50, 55, 50), (30, 30, 32), (170, 170, 165)][int(rng.integers(4))], 10)
    shade = s.shade_at(x, z)
    c.fill(s.upright(x - w / 2, x + w / 2, 0, h, z), POLE, colour, shade)
    if rng.random() < 0.7:  # a street light's arm and lamp
        reach = rng.uniform(0.8, 2.5) * toward_road
        x1 = x + reach
        c.fill(s.upright(min(x, x1), max(x, x1), h - 0.15, h, z), POLE, colour, shade)
        c.fill(s.upright(x1 - 0.3, x1 + 0.3, h - 0.3, h - 0.05, z), POLE, _scale(colour, 1.2), shade)
    if rng.random() < 0.3:  # a sign fixed to the pole
        _draw_sign_face(s, x + toward_road * 0.1, rng.uniform(2.5, 3.5), z, shade)


def _draw_sign_face(s: _Scene, x: float, y: float, z: float, shade: int) -> None:
    rng, c = s.rng, s.canvas
    r = rng.uniform(0.3, 0.45)
    shape = rng.choice(["circle", "triangle", "diamond", "rect", "octagon", "wide"])
    n = {"circle": 20, "triangle": 3, "diamond": 4, "octagon": 8}.get(shape)
    if n:
        turn = np.pi / 2 if n in (3, 4) else np.pi / 8 if n == 8 else 0.0  # point up; octagons flat on top
        a = np.linspace(0, 2 * np.pi, n, endpoint=False) + turn
        unit = np.stack([np.cos(a), np.sin(a)], 1)
    else:
        aspect = 2.2 if shape == "wide" else 0.75
        unit = np.array([[-aspect, -1], [aspect, -1], [aspect, 1], [-aspect, 1]]) * 0.8

    def face(k: float) -> np.ndarray:
        return s.project(x + unit[:, 0] * r * k, y + unit[:, 1] * r * k, z)

    if rng.random() < 0.2:  # seen from behind: a grey plate
        c.fill(face(1.0), SIGN, _jitter(rng, (150, 150, 150), 20), shade)
        return
    rim, inner = [((200, 30, 30), (240, 240, 240)), ((30, 70, 170), (30, 70, 170)), ((240, 200, 30), (250, 220, 60)),
                  ((250, 250, 250), (30, 110, 60)), ((200, 30, 30), (200, 30, 30))][int(rng.integers(5))]
    c.fill(face(1.0), SIGN, _jitter(rng, rim, 15), shade)
    c.fill(face(0.72), SIGN, _jitter(rng, inner, 15), shade)
    if rng.random() < 0.6:  # a symbol or text
        c.fill(s.upright(x - r * 0.35, x + r * 0.35, y - r * 0.12, y + r * 0.12, z), SIGN,
               _jitter(rng, (25, 25, 25), 10) if rng.random() < 0.7 else _jitter(rng, (245, 245, 245), 10), shade)


def _draw_sign(s: _Scene, x: float, z: float) -> None:
    rng, c = s.rng, s.canvas
    post = rng.uniform(1.9, 2.8)
    shade = s.shade_at(x, z)
    c.fill(s.upright(x - 0.04, x + 0.04, 0, post, z), POLE, _jitter(rng, (140, 140, 145), 20), shade)
    _draw_sign_face(s, x, post + 0.35, z, shade)


def _street_objects(s: _Scene) -> list[tuple[float, Callable[[], None]]]:
    """What stands in the street, each as (depth, draw); the first of each kind is placed where it shows."""
    rng = s.rng
    objects = []
    r0, r1 = s.road
    zmax = 90.0

    def place(x: float, lo: float, hi: float) -> float:
        return s.depth(max(lo, s.visible_from(x)), hi)

    lane_w = (r1 - r0) / s.lanes
    for i in range(int(rng.integers(1, 8))):
        if (r1 - r0) > 7 and rng.random() < 0.3:  # parked at the kerb
            x = r0 + 1.1 if rng.random() < 0.5 else r1 - 1.1
        else:
            x = r0 + (int(rng.integers(s.lanes)) + 0.5) * lane_w + rng.uniform(-0.3, 0.3)
        z = place(x, s.z_bottom * 1.2, 30 if i == 0 else zmax)
        objects.append((z, lambda x=x, z=z: _draw_vehicle(s, x, z)))
    for i in range(int(rng.integers(1, 9))):
        side = int(rng.choice([-1, 1]))
        if i > 0 and rng.random() < 0.2:  # crossing the road
            x = rng.uniform(r0 + 0.5, r1 - 0.5)
        else:
            a, b = s.walk[side]
            x = a + side * rng.uniform(0.4, max(abs(b - a) - 0.4, 0.5))
        z = place(x, s.z_bottom * 0.9, 25 if i == 0 else 70)
        objects.append((z, lambda x=x, z=z: _draw_person(s, x, z)))
    for side in (-1, 1):
        a = s.walk[side][0]
        x = a + side * 0.45
        z, step = rng.uniform(2, 20), rng.uniform(12, 30)
        z = max(z, s.visible_from(x) * 1.05)  # the first street light in frame
        while z < 100:
            objects.append((z, lambda x=x, z=z, side=side: _draw_pole(s, x, z, -side)))
            z += step
        if rng.random() < 0.65:  # street trees in pits near the kerb
            z, step = rng.uniform(3, 15), rng.uniform(8, 20)
            xt = a + side * rng.uniform(0.9, 1.6)
            while z < 80:
                objects.append((z, lambda x=xt, z=z: _draw_tree(s, x, z)))
                z += step
    for i in range(int(rng.integers(1, 4))):
        side = int(rng.choice([-1, 1]))
        x = s.walk[side][0] + side * rng.uniform(0.3, 1.0)
        z = place(x, s.z_bottom, 25 if i == 0 else 60)
        objects.append((z, lambda x=x, z=z: _draw_sign(s, x, z)))
    return sorted(objects, key=lambda o: -o[0])  # far to near


# Camera: textures, light, lens, sensor ------------------------------------------------------------------
_SHIFTS = 64  # each noise field is read at one of 64 x 64 offsets


@functools.lru_cache(maxsize=2)
def _noise_bank(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed noise fields a little larger than the frame (fine, leafy, blotchy, and 3-channel sensor noise);
    each scene reads them at its own random offset. Fresh noise would cost more than drawing the scene."""
    rng = np.random.default_rng(0x5EED)
    H, W = h + _SHIFTS, w + _SHIFTS

    def smooth(scale: int) -> np.ndarray:
        small = rng.standard_normal((max(2, H // scale), max(2, W // scale)), dtype=np.float32)
        big = cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
        return (big / max(float(big.std()), 1e-6)).astype(np.float32)

    return (rng.standard_normal((H, W), dtype=np.float32), smooth(3), smooth(16),
            rng.standard_normal((H, W, 3), dtype=np.float32))


@functools.lru_cache(maxsize=4)
def _radius2(h: int, w: int) -> np.ndarray:
    """Squared distance from the image centre, 1 at the corners: the shape of vignetting."""
    yy, xx = np.ogrid[-1:1:h * 1j, -1:1:w * 1j]
    return ((xx * xx + yy * yy) / 2).astype(np.float32)


# Per class: fine grain, leafy (3 px) and blotchy (16 px) luminance variation, and hue variation.
_TEXTURE = np.array([
    # fine          leafy          blotchy        hue
    [(0.05, 0.12), (0.0, 0.03), (0.03, 0.09), (0.0, 0.0)],   # road
    [(0.03, 0.08), (0.0, 0.03), (0.03, 0.07), (0.0, 0.0)],   # sidewalk
    [(0.02, 0.06), (0.0, 0.03), (0.03, 0.10), (0.0, 0.0)],   # building
    [(0.08, 0.18), (0.15, 0.30), (0.05, 0.12), (0.05, 0.15)],  # vegetation
    [(0.0, 0.01), (0.0, 0.0), (0.01, 0.05), (0.0, 0.0)],     # sky
    [(0.0, 0.03), (0.0, 0.01), (0.0, 0.02), (0.0, 0.0)],     # vehicle
    [(0.01, 0.05), (0.0, 0.03), (0.0, 0.02), (0.0, 0.0)],    # person
    [(0.0, 0.03), (0.0, 0.0), (0.0, 0.02), (0.0, 0.0)],      # pole
    [(0.0, 0.02), (0.0, 0.0), (0.0, 0.01), (0.0, 0.0)],      # traffic sign
    [(0.06, 0.15), (0.03, 0.10), (0.08, 0.20), (0.03, 0.12)],  # terrain
], np.float32)


def _develop(s: _Scene) -> np.ndarray:
    """The drawn scene through a camera: textures, shadows, exposure, colour cast, vignetting, blur, noise."""
    rng, c, h, w = s.rng, s.canvas, s.h, s.w
    fine, leafy, blotchy, sensor = _noise_bank(h, w)

    def crop(field: np.ndarray) -> np.ndarray:
        y, x = rng.integers(_SHIFTS + 1, size=2)
        return field[y:y + h, x:x + w]

    amp = rng.uniform(_TEXTURE[..., 0], _TEXTURE[..., 1]).astype(np.float32)  # (10, 4)
    lab = c.label

    def per_class(k: int, field: np.ndarray) -> np.ndarray:
        out = np.take(amp[:, k], lab)
        out *= crop(field)
        return out

    lum = per_class(0, fine)
    lum += per_class(1, leafy)
    lum += per_class(2, blotchy)
    lum += 1
    if c.shaded:
        shade = cv2.GaussianBlur(c.shade, (5, 5), rng.uniform(0.6, 1.5))  # soft shadow edges (penumbra)
        lum *= shade.astype(np.float32) * np.float32(1 / 255)
    img = c.image.astype(np.float32)
    img *= lum[..., None]
    hue = per_class(3, leafy)
    hue += 1
    img[..., 1] *= hue  # greens drift towards yellow and blue

    # Exposure, contrast and colour cast: one multiply-add per channel.
    gain = rng.uniform(0.55, 1.35) * rng.uniform(0.88, 1.12, 3)
    contrast = rng.uniform(0.7, 1.2) if s.sunny else rng.uniform(0.6, 1.0)
    mean = img[::8, ::8].reshape(-1, 3).mean(0)
    affine = np.zeros((3, 4), np.float32)
    affine[:, :3] = np.diag(gain * contrast)
    affine[:, 3] = gain * mean * (1 - contrast) + rng.uniform(-10, 10, 3)
    img = cv2.transform(img, affine)
    if rng.random() < 0.3:  # vignetting
        img *= (1 - rng.uniform(0.1, 0.35) * _radius2(h, w))[..., None]
    if rng.random() < 0.6:  # lens blur
        img = cv2.GaussianBlur(img, (5, 5), rng.uniform(0.4, 1.1))
    img += np.float32(rng.uniform(1.5, 7.0)) * crop(sensor)
    return np.clip(img, 0, 255).astype(np.uint8)


# Public -------------------------------------------------------------------------------------------------
def render_scene(seed: int, size: tuple[int, int] = (256, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A street scene and its labels for ``seed``: ((H, W, 3) uint8 RGB, (H, W) uint8 class ids into
    ``SYNTHETIC_CLASSES``). The same seed and size give the same arrays; the labels never contain 255."""
    h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"render_scene: size {size} is too small; give (height, width) of at least 8x8")
    rng = np.random.default_rng(seed)
    s = _Scene(rng, h, w)
    _draw_sky(s)
    _draw_skyline(s)
    _draw_street(s)
    for seg in _segments(s):
        (_draw_park if seg["kind"] == "park" else _draw_building)(s, seg["side"], seg["z0"], seg["z1"])
    for x0, x1, z0, z1 in s.sun_shadows:
        # On the street between the sidewalks' outer edges, where only ground is drawn so far (facades and
        # parks lie outside it); things drawn later are lit unless they stand in a shadow (shade_at).
        s.canvas.shadow(s.ground(x0, x1, max(z0, s.z_near), max(z1, s.z_near)), s.sun_shade)
    for _, draw in _street_objects(s):
        draw()
    return _develop(s), s.canvas.label.copy()


def write_dataset(root: Path, count: int, size: tuple[int, int] = (256, 512), seed: int = 0) -> Path:
    """Write ``count`` scenes in the plain layout: ``images/000000.png``, ``masks/000000.png`` (uint8 class
    ids) and ``classes.txt``. Image ``i`` is ``render_scene(seed + i, size)``. Writing again into the same
    ``root`` replaces an earlier run's scenes, including any beyond ``count``. Returns ``root``."""
    root = Path(root)
    folders = (root / "images", root / "masks")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):  # only names this function writes
            if int(old.stem) >= count:
                old.unlink()
    (root / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    for i in range(count):
        image, label = render_scene(seed + i, size)
        name = f"{i:06d}.png"
        if not (cv2.imwrite(str(folders[0] / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                and cv2.imwrite(str(folders[1] / name), label)):
            raise OSError(f"cannot write {folders[0] / name}; check that {root} is writable")
    return root

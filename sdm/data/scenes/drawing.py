"""Perspective drawing primitives for the procedural street scenes of :mod:`sdm.data.scenes`.

World frame, in camera heights (1 unit ~ 1.4 m): X lateral (right positive), Y up (0 = ground),
Z depth ahead of the camera. Image coordinates are relative (x in widths, y in heights), so a
scene looks the same at every resolution. With ``s = 1 / Z`` a world point lands on

    x = xv + ax * X * s,        y = yh + (1 - Y) * s

(vanishing point ``(xv, yh)``). ``ax < 1`` squeezes the view sideways like a landscape street
photograph resized to a square, so that the road and both sidewalks fit in the frame.

Every shape is drawn twice with PIL: its class id into the label map and a flat colour into the
colour map; details (windows, wheels, tile joints) go into the colour map only and always lie
inside the shape drawn just before them, so labels stay exact. Ground shadows go to a third map.
Nothing here draws random numbers: callers pass every choice in, which keeps scenes identical
across resolutions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sdm.data.classes import CLASS_ID

Point = tuple[float, float]
RGB = tuple[int, int, int]

C = CLASS_ID  # short alias: C["flat-road"]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at height 1 looking along +Z; see the module docstring."""

    yh: float
    xv: float
    ax: float = 0.5

    def p(self, x: float, y: float, z: float) -> Point:
        s = 1.0 / z
        return (self.xv + self.ax * x * s, self.yh + (1.0 - y) * s)


def rgb(colour: Sequence[float], gain: float = 1.0) -> RGB:
    """An int RGB tuple for PIL, clipped to 0..255."""
    r, g, b = (int(min(255.0, max(0.0, c * gain))) for c in colour)
    return (r, g, b)


class Canvas:
    """Label, colour and ground-shade maps drawn together in relative coordinates."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.label = Image.new("L", (width, height), 0)
        self.colour = Image.new("RGB", (width, height), (0, 0, 0))
        self.shade = Image.new("L", (width, height), 255)
        self._dl = ImageDraw.Draw(self.label)
        self._dc = ImageDraw.Draw(self.colour)
        self._ds = ImageDraw.Draw(self.shade)

    def px(self, pts: Sequence[Point]) -> list[Point]:
        return [(x * self.w - 0.5, y * self.h - 0.5) for x, y in pts]

    def visible(self, rel_w: float, rel_h: float) -> bool:
        """Whether a detail of this relative size covers at least about a pixel."""
        return rel_w * self.w >= 1.2 and rel_h * self.h >= 1.2

    def poly(self, pts: Sequence[Point], cls: int, colour: RGB) -> None:
        p = self.px(pts)
        self._dl.polygon(p, fill=cls)
        self._dc.polygon(p, fill=colour)

    def detail(self, pts: Sequence[Point], colour: RGB) -> None:
        self._dc.polygon(self.px(pts), fill=colour)

    def ellipse(
        self, c: Point, rx: float, ry: float, cls: int | None, colour: RGB, ring: float = 0.0
    ) -> None:
        """Filled ellipse, or a ring of relative thickness ``ring``; ``cls=None`` = colour only."""
        (x, y), = self.px([c])
        box = (x - rx * self.w, y - ry * self.h, x + rx * self.w, y + ry * self.h)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            return
        if ring > 0:
            width = max(1, round(ring * self.h))
            self._dc.ellipse(box, outline=colour, width=width)
            if cls is not None:
                self._dl.ellipse(box, outline=cls, width=width)
        else:
            self._dc.ellipse(box, fill=colour)
            if cls is not None:
                self._dl.ellipse(box, fill=cls)

    def line(self, pts: Sequence[Point], cls: int | None, colour: RGB, width: float) -> None:
        """Polyline of relative width ``width`` (at least one pixel)."""
        w = max(1, round(width * self.h))
        p = self.px(pts)
        self._dc.line(p, fill=colour, width=w)
        if cls is not None:
            self._dl.line(p, fill=cls, width=w)

    def shadow(self, pts: Sequence[Point], level: int) -> None:
        self._ds.polygon(self.px(pts), fill=level)


def hull(points: Sequence[Point]) -> list[Point]:
    """Convex hull (monotone chain) of a handful of projected points."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts

    def cross(o: Point, a: Point, b: Point) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[Point] = []
    upper: list[Point] = []
    for seq, out in ((pts, lower), (pts[::-1], upper)):
        for q in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], q) <= 0:
                out.pop()
            out.append(q)
    return lower[:-1] + upper[:-1]


def box_hull(cam: Camera, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float
             ) -> list[Point]:
    """Outline of a street-aligned box."""
    return hull([cam.p(x, y, z) for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])


def gquad(cam: Camera, x0: float, x1: float, z0: float, z1: float) -> list[Point]:
    """A rectangle on the ground, X in [x0, x1], Z in [z0, z1] (z1 may be inf)."""
    return [cam.p(x0, 0, z0), cam.p(x1, 0, z0), cam.p(x1, 0, z1), cam.p(x0, 0, z1)]


def squad(cam: Camera, x: float, y0: float, y1: float, z0: float, z1: float) -> list[Point]:
    """A vertical rectangle along the street (a facade plane) at lateral ``x``."""
    return [cam.p(x, y0, z0), cam.p(x, y1, z0), cam.p(x, y1, z1), cam.p(x, y0, z1)]


def fquad(cam: Camera, x: float, z: float, u0: float, u1: float, y0: float, y1: float,
          lean: float = 0.0) -> list[Point]:
    """A rectangle facing the camera at depth ``z`` (its top shifted sideways by ``lean``)."""
    return [cam.p(x + u0, y0, z), cam.p(x + u1, y0, z), cam.p(x + u1 + lean, y1, z),
            cam.p(x + u0 + lean, y1, z)]


def shrink(pts: Sequence[Point], f: float) -> list[Point]:
    cx = sum(p[0] for p in pts) / len(pts)
    cy = sum(p[1] for p in pts) / len(pts)
    return [(cx + (x - cx) * f, cy + (y - cy) * f) for x, y in pts]


def ground_ellipse(cam: Camera, x: float, z: float, rx: float, rz: float) -> list[Point]:
    return [cam.p(x + rx * np.cos(a), 0, z + rz * np.sin(a)) for a in np.linspace(0, 6.28, 10)]


# ----------------------------------------------------------------------------- ground


def ground(cv: Canvas, cam: Camera, x0: float, x1: float, z0: float, z1: float, cls: int,
           colour: RGB) -> None:
    cv.poly(gquad(cam, x0, x1, z0, z1), cls, colour)


def tile_joints(cv: Canvas, cam: Camera, x0: float, x1: float, z0: float, z1: float, size: float,
                colour: RGB) -> None:
    """Paving joints on a ground rectangle: lines along the street and across it."""
    z_far = min(z1, 80.0)
    for k in range(1, int((x1 - x0) / size)):
        x = x0 + k * size
        cv.line([cam.p(x, 0, z0), cam.p(x, 0, z_far)], None, colour, 0.002)
    z = max(z0, 1.0)
    while z < z_far and (cam.p(x0, 0, z)[1] - cam.p(x0, 0, z + size)[1]) * cv.h >= 2.5:
        cv.line([cam.p(x0, 0, z), cam.p(x1, 0, z)], None, colour, 0.002)
        z += size


def dashes(cv: Canvas, cam: Camera, x: float, width: float, period: float, z_start: float,
           colour: RGB) -> None:
    """Dashed lane marking at lateral position ``x``, coloured only (it stays ``flat-road``)."""
    z, half = z_start, period / 2
    while z < 90 and (cam.p(x, 0, z)[1] - cam.p(x, 0, z + half)[1]) * cv.h >= 1.0:
        cv.detail(gquad(cam, x - width / 2, x + width / 2, z, z + half), colour)
        z += period


def crosswalk(cv: Canvas, cam: Camera, x0: float, x1: float, z0: float, depth: float,
              colour: RGB) -> None:
    """Zebra stripes (along the street) over the road between x0 and x1."""
    n = max(2, int((x1 - x0) / 0.85))
    step = (x1 - x0) / n
    for k in range(n):
        a = x0 + k * step + 0.2 * step
        ground(cv, cam, a, a + 0.55 * step, z0, z0 + depth, C["flat-crosswalk"], colour)


# ----------------------------------------------------------------------------- facades


def side_facade(cv: Canvas, cam: Camera, x: float, z0: float, z1: float, height: float,
                colour: RGB, glass: RGB, door_at: float | None, door_colour: RGB) -> None:
    """A building front parallel to the street at lateral ``x``: wall, window grid, door."""
    cv.poly(squad(cam, x, 0, height, z0, z1), C["construction-building"], colour)
    z_top = min(z1, 120.0)
    cv.detail(squad(cam, x, height - 0.25, height, z0, z_top), rgb(colour, 0.75))  # cornice
    floors = int((height - 0.6) / 2.2)
    z = z0 + 0.8
    while z + 0.8 < z_top:
        a, b = cam.p(x, 0, z), cam.p(x, 0, z + 0.8)
        if not cv.visible(abs(a[0] - b[0]), (a[1] - b[1]) * 1.2):
            break  # farther windows would be smaller than a pixel
        if door_at is None or abs(z + 0.4 - door_at) > 1.2:
            for f in range(floors):
                y0 = 0.9 + 2.2 * f if f else 0.6
                cv.detail(squad(cam, x, y0, y0 + (1.1 if f else 1.3), z, z + 0.8), glass)
        z += 2.5
    if door_at is not None and z0 < door_at < z_top:
        cv.poly(squad(cam, x, 0, 1.6, door_at - 0.45, door_at + 0.45), C["construction-door"],
                door_colour)


def front_facade(cv: Canvas, cam: Camera, x0: float, x1: float, z: float, height: float,
                 colour: RGB, glass: RGB) -> None:
    """A building facing the camera (closing the street) with a grid of windows."""
    cv.poly(fquad(cam, 0, z, x0, x1, 0, height), C["construction-building"], colour)
    a, b = cam.p(0, 0, z), cam.p(1.0, 1.0, z)
    if not cv.visible(b[0] - a[0], a[1] - b[1]):
        return
    for f in range(int((height - 0.6) / 2.2)):
        y0 = 0.7 + 2.2 * f
        for xx in np.arange(x0 + 0.7, x1 - 0.9, 2.0):
            cv.detail(fquad(cam, 0, z, xx, xx + 0.9, y0, y0 + 1.2), glass)


def side_wall(cv: Canvas, cam: Camera, x: float, z0: float, z1: float, height: float, cls: int,
              colour: RGB, post_every: float) -> None:
    """Low wall or fence along the street, with coloured courses (walls) or posts (fences)."""
    cv.poly(squad(cam, x, 0, height, z0, z1), cls, colour)
    dark = rgb(colour, 0.6)
    z_far = min(z1, 100.0)
    if post_every > 0:  # fence: a top rail and posts
        cv.detail(squad(cam, x, height - 0.08, height, z0, z_far), dark)
        z = z0 + post_every / 2
        while z < z_far and (cam.p(x, 0, z)[1] - cam.p(x, 0, z + 0.12)[1]) * cv.h >= 0.6:
            cv.detail(squad(cam, x, 0, height, z, z + 0.12), dark)
            z += post_every
    else:  # wall: horizontal mortar courses
        for y in np.arange(0.22, height - 0.1, 0.22):
            cv.line([cam.p(x, y, z0), cam.p(x, y, z_far)], None, dark, 0.0015)


# ----------------------------------------------------------------------------- objects

_VEHICLES = {  # class, width, length, height
    "car": (C["vehicle-car"], 1.25, 3.0, 1.05),
    "bus": (C["vehicle-bus"], 1.8, 8.0, 2.2),
    "truck": (C["vehicle-truck"], 1.75, 5.5, 2.3),
}


def car(cv: Canvas, cam: Camera, x: float, z: float, body: RGB, kind: str = "car") -> None:
    """A car, bus or truck as boxes (body, cabin) with wheels, glass and rear lights."""
    cls, w, length, hgt = _VEHICLES[kind]
    x0, x1, z1 = x - w / 2, x + w / 2, z + length
    for zz in (z1 - 0.55, z + 0.55):
        for xx in (x0 + 0.05, x1 - 0.05):
            cv.ellipse(cam.p(xx, 0.2, zz), cam.ax * 0.24 / zz, 0.2 / zz, cls, (25, 25, 28))
    cv.poly(box_hull(cam, x0, x1, 0.15, 0.55 if kind == "car" else hgt, z, z1), cls, body)
    glass = rgb(body, 0.55)  # tinted glass keeps the vehicle's own colour family
    if kind == "car":
        low = [cam.p(u, 0.55, v) for u in (x0 + 0.06, x1 - 0.06) for v in (z + 0.45, z1 - 0.6)]
        top = [cam.p(u, hgt, v) for u in (x0 + 0.18, x1 - 0.18) for v in (z + 0.9, z1 - 1.2)]
        cab = hull(low + top)  # sloping windscreens
        cv.poly(cab, cls, rgb(body, 0.92))
        cv.detail(shrink(cab, 0.82), glass)
    else:  # rear window band and a side window strip on the side the camera sees
        cv.detail(fquad(cam, x, z, -w / 2 + 0.15, w / 2 - 0.15, hgt * 0.55, hgt * 0.9), glass)
        side = x0 if cam.p(x0, 0, z)[0] > cam.xv else x1
        cv.detail(squad(cam, side, hgt * 0.55, hgt * 0.9, z + 0.3, z1 - 0.3), glass)
    if cv.visible(cam.ax * 0.2 / z, 0.1 / z):
        for u in (-w / 2 + 0.05, w / 2 - 0.25):
            cv.detail(fquad(cam, x, z, u, u + 0.2, 0.4, 0.5), (200, 30, 30))
    cv.shadow(box_hull(cam, x0 - 0.1, x1 + 0.1, 0, 0, z - 0.2, z1 + 0.1), 150)


def person(cv: Canvas, cam: Camera, x: float, z: float, height: float, shirt: RGB, pants: RGB,
           skin: RGB, hair: RGB, stride: float, cls: int = C["human-person"]) -> None:
    """A standing or walking person in the image plane; all parts share the person's class."""
    h, s = height, 1.0 / z
    leg = 0.5 * h
    cv.poly(fquad(cam, x, z, -0.13 - stride, -0.02 - stride / 2, 0, leg, stride / 2), cls, pants)
    cv.poly(fquad(cam, x, z, 0.02 + stride, 0.13 + stride / 2, 0, leg, -stride / 2), cls, pants)
    cv.poly(fquad(cam, x, z, -0.23, -0.15, 0.5 * h, 0.8 * h), cls, shirt)
    cv.poly(fquad(cam, x, z, 0.15, 0.23, 0.5 * h, 0.8 * h), cls, shirt)
    cv.poly(fquad(cam, x, z, -0.15, 0.15, 0.47 * h, 0.82 * h), cls, shirt)
    cv.poly(fquad(cam, x, z, -0.19, 0.19, 0.7 * h, 0.82 * h), cls, shirt)  # shoulders
    cv.ellipse(cam.p(x, 0.9 * h, z), cam.ax * 0.085 * h * s, 0.085 * h * s, cls, skin)
    cv.ellipse(cam.p(x, 0.94 * h, z), cam.ax * 0.075 * h * s, 0.04 * h * s, None, hair)
    cv.shadow(ground_ellipse(cam, x, z + 0.15, 0.25, 0.3), 170)


def bicycle(cv: Canvas, cam: Camera, x: float, z: float, frame: RGB,
            rider: tuple[RGB, RGB, RGB] | None) -> None:
    """A bicycle seen from the side (optionally ridden: the rider gets ``human-rider``)."""
    cls, s, r = C["vehicle-bicycle"], 1.0 / z, 0.25
    tyre = rgb(frame, 0.6)  # coloured tyres keep the class's own look, away from the dark end
    for u in (-0.38, 0.38):
        cv.ellipse(cam.p(x + u, r, z), cam.ax * r * s, r * s, cls, tyre, ring=0.035 * s)

    def q(u: float, y: float) -> Point:
        return cam.p(x + u, y, z)

    rear, front, bb = q(-0.38, r), q(0.38, r), q(-0.05, 0.27)
    seat, head = q(-0.15, 0.7), q(0.3, 0.68)
    cv.line([rear, bb, seat, rear], cls, frame, 0.025 * s)
    cv.line([bb, head, front], cls, frame, 0.025 * s)
    cv.line([seat, head], cls, frame, 0.025 * s)
    cv.line([head, q(0.27, 0.82), q(0.16, 0.84)], cls, tyre, 0.02 * s)
    if rider is not None:
        shirt, pants, skin = rider
        hc = C["human-rider"]
        cv.line([q(-0.12, 0.72), q(0.02, 0.5), q(-0.02, 0.25)], hc, pants, 0.07 * s)
        cv.poly([q(-0.2, 0.7), q(-0.04, 0.7), q(0.12, 1.22), q(-0.04, 1.26)], hc, shirt)
        cv.line([q(0.05, 1.18), q(0.2, 0.95), q(0.18, 0.84)], hc, shirt, 0.05 * s)
        cv.ellipse(q(0.06, 1.36), cam.ax * 0.09 * s, 0.09 * s, hc, skin)


def tree(cv: Canvas, cam: Camera, x: float, z: float, trunk_h: float, radius: float,
         blobs: Sequence[tuple[float, float, float, float]], green: RGB) -> None:
    """Trunk plus a crown of overlapping ellipses; ``blobs`` = (du, dy, r_frac, brightness)."""
    cls, s = C["nature-vegetation"], 1.0 / z
    cv.shadow(ground_ellipse(cam, x, z, radius, 0.6 * radius), 135)
    cv.poly(fquad(cam, x, z, -0.09, 0.09, 0, trunk_h + radius * 0.5), cls, (80, 82, 52))  # bark
    for du, dy, rf, br in blobs:
        c = cam.p(x + du * radius, trunk_h + radius * (0.7 + dy), z)
        cv.ellipse(c, cam.ax * radius * rf * s, radius * rf * s, cls, rgb(green, br))


def hedge(cv: Canvas, cam: Camera, x0: float, x1: float, z0: float, z1: float, height: float,
          green: RGB) -> None:
    cv.poly(box_hull(cam, x0, x1, 0, height, z0, z1), C["nature-vegetation"], green)


def pole(cv: Canvas, cam: Camera, x: float, z: float, height: float, colour: RGB, attach: str,
         sign_colour: RGB, lamp: int, arm: float = 1.0, housing: RGB = (214, 172, 28)) -> None:
    """A bare pole, a street lamp (arm towards ``arm`` = +-1), a sign or a traffic light
    (``lamp`` = which of red, amber, green is lit)."""
    s, white = 1.0 / z, (235, 235, 235)
    cv.poly(fquad(cam, x, z, -0.05, 0.05, 0, height), C["object-pole"], colour)
    if attach == "lamp":
        cv.line([cam.p(x, height, z), cam.p(x + 0.9 * arm, height + 0.15, z)], C["object-pole"],
                colour, 0.05 * s)
    elif attach in ("round", "square", "triangle"):
        cls, rad, yc = C["object-trafficsign"], 0.27, height - 0.25
        if attach == "round":
            cv.ellipse(cam.p(x, yc, z), cam.ax * rad * s, rad * s, cls, sign_colour)
            cv.ellipse(cam.p(x, yc, z), cam.ax * rad * 0.35 * s, rad * 0.35 * s, None, white)
        else:
            if attach == "square":
                shape = fquad(cam, x, z, -rad, rad, yc - rad, yc + rad)
            else:
                shape = [cam.p(x - rad, yc - 0.2, z), cam.p(x + rad, yc - 0.2, z),
                         cam.p(x, yc + 0.3, z)]
            cv.poly(shape, cls, sign_colour)
            cv.detail(shrink(shape, 0.35), white)
    elif attach == "light":
        # the yellow backboard of many European lights gives the class its own colour
        cv.poly(fquad(cam, x, z, -0.14, 0.14, height - 0.1, height + 0.75),
                C["object-trafficlight"], housing)
        for k, on_colour in enumerate(((220, 40, 30), (230, 170, 30), (40, 200, 90))):
            cv.ellipse(cam.p(x, height + 0.6 - 0.25 * k, z), cam.ax * 0.08 * s, 0.08 * s, None,
                       on_colour if k == lamp else (60, 60, 55))


def bin_box(cv: Canvas, cam: Camera, x: float, z: float, colour: RGB) -> None:
    """A street bin (``void-static``) with a darker lid."""
    cv.poly(box_hull(cam, x - 0.2, x + 0.2, 0, 0.7, z, z + 0.4), C["void-static"], colour)
    cv.detail(box_hull(cam, x - 0.2, x + 0.2, 0.6, 0.7, z, z + 0.4), rgb(colour, 0.7))

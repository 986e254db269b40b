"""The random layout of one street scene (cross-section, facades, objects) and its texture;
:func:`generate_scene` is the one entry point."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
from PIL import Image

from sdm.data.scenes import drawing as d
from sdm.data.scenes.drawing import C, Camera, Canvas, rgb
from sdm.data.scenes.palette import (
    _BASE,
    _BIKES,
    _BUS,
    _CARS,
    _FACADES,
    _GLASS,
    _PANTS,
    _RIDER,
    _SHIRTS,
    _SIGNS,
    _SKIN,
    _TEX,
    _TRUCK,
)


def _pick(rng: np.random.Generator, table: tuple) -> tuple:
    return table[int(rng.integers(len(table)))]


def _jit(rng: np.random.Generator, colour: tuple, amount: float = 0.08, gain: float = 1.0) -> d.RGB:
    """Per-instance colour: a shared brightness change plus a small per-channel one."""
    g = gain * (1.0 + amount * rng.standard_normal())
    return rgb([c * (g + amount / 3 * rng.standard_normal()) for c in colour])


def _person_args(rng: np.random.Generator, shirts: tuple = _SHIRTS, pants: tuple = _PANTS) -> tuple:
    """Shirt, trousers and skin colours of one person."""
    return (_jit(rng, _pick(rng, shirts)), _jit(rng, _pick(rng, pants)),
            _jit(rng, _pick(rng, _SKIN), 0.05))


def _side_plan(rng: np.random.Generator, edge: float) -> dict:
    """Cross-section of one side of the street, as distances outward from the road centre."""
    p: dict = {}
    dist = edge
    p["parking"] = (dist, dist := dist + 2.0) if rng.random() < 0.25 else None
    p["curb"] = (dist, dist := dist + 0.16)
    p["cycle"] = (dist, dist := dist + 1.1) if rng.random() < 0.25 else None
    p["verge"] = (dist, dist := dist + rng.uniform(0.8, 1.8)) if rng.random() < 0.35 else None
    p["walk"] = (dist, dist := dist + rng.uniform(1.8, 4.0))
    p["garden"] = (dist, dist := dist + rng.uniform(1.5, 4.0)) if rng.random() < 0.25 else None
    p["front"], p["back"] = dist, dist + rng.uniform(5.0, 14.0)
    return p


@dataclass
class _Street:
    """One street's random layout; ``x(side, dist)`` turns a cross-section distance into world X."""

    rng: np.random.Generator
    cv: Canvas
    cam: Camera
    half: float  # half road width
    sides: dict[int, dict]  # -1 = left, +1 = right
    cam_x: float
    sun: int  # the sunlit side
    z_end: float  # depth of the building closing the street (150 = open street)
    objects: list[tuple[float, partial]] = field(default_factory=list)  # (depth, draw call)

    def x(self, side: int, dist: float) -> float:
        return side * dist - self.cam_x

    def later(self, z: float, draw, *args) -> None:  # noqa: ANN001 - a drawing function
        """Queue an upright object; they are drawn far to near once all are placed."""
        self.objects.append((float(z), partial(draw, self.cv, self.cam, *args)))


def _new_street(rng: np.random.Generator, cv: Canvas) -> _Street:
    cam = Camera(yh=rng.uniform(0.36, 0.52), xv=rng.uniform(0.3, 0.7), ax=rng.uniform(0.42, 0.58))
    half = int(rng.choice([1, 2, 2, 3])) * rng.uniform(1.9, 2.5) / 2
    sides = {sd: _side_plan(rng, half) for sd in (-1, 1)}
    if rng.random() < 0.7:  # standing on a sidewalk, as in the real data
        sd = 1 if rng.random() < 0.5 else -1
        a, b = sides[sd]["walk"]
        cam_x = sd * rng.uniform(a + 0.4, max(a + 0.5, b - 0.4))
    else:
        cam_x = rng.uniform(-half * 0.6, half * 0.6)
    sun = 1 if rng.random() < 0.5 else -1
    z_end = rng.uniform(35, 90) if rng.random() < 0.55 else 150.0
    return _Street(rng, cv, cam, half, sides, cam_x, sun, z_end)


def _draw_back(st: _Street) -> None:
    """Sky, a ground fill, and the set-back buildings or tree lines seen through gaps."""
    rng, cv, cam, x = st.rng, st.cv, st.cam, st.x
    cv.poly([(-1, -1), (2, -1), (2, cam.yh), (-1, cam.yh)], C["sky"], (0, 0, 0))
    terrain = _jit(rng, _BASE["nature-terrain"])
    cv.poly([(-1, cam.yh), (2, cam.yh), (2, 2), (-1, 2)], C["nature-terrain"], terrain)
    for sd, p in st.sides.items():
        name = "flat-parkingdriveway" if rng.random() < 0.4 else "nature-terrain"
        d.ground(cv, cam, x(sd, p["front"]), x(sd, p["back"]), 0.3, st.z_end, C[name],
                 _jit(rng, _BASE[name]))
        if rng.random() < 0.6:
            d.side_facade(cv, cam, x(sd, p["back"]), 0.3, st.z_end, rng.uniform(7, 16),
                          _jit(rng, _pick(rng, _FACADES), gain=0.9), _jit(rng, _GLASS), None,
                          (0, 0, 0))
            continue
        for z in np.arange(rng.uniform(1, 4), st.z_end, 3.0):
            r, trunk = rng.uniform(1.5, 2.6), rng.uniform(1.5, 3.0)
            d.tree(cv, cam, x(sd, p["back"]), float(z), trunk, r, [(0, 0, 1, 1.0)],
                   _jit(rng, _BASE["nature-vegetation"], 0.12))


def _draw_surface(st: _Street) -> None:
    """Road, curbs, lanes, sidewalks and verges (with joints, markings, shadows, crosswalk)."""
    rng, cv, cam, x, half = st.rng, st.cv, st.cam, st.x, st.half
    road = _jit(rng, _BASE["flat-road"], 0.04)
    d.ground(cv, cam, x(-1, half), x(1, half), 0.3, np.inf, C["flat-road"], road)
    strips = (("parking", "flat-parkingdriveway"), ("curb", "flat-curb"),
              ("cycle", "flat-cyclinglane"), ("verge", "nature-terrain"),
              ("walk", "flat-sidewalk"), ("garden", "nature-terrain"))
    for sd, p in st.sides.items():
        for key, name in strips:
            if p[key] is None:
                continue
            colour = _jit(rng, _BASE[name], 0.06)
            x0, x1 = sorted((x(sd, p[key][0]), x(sd, p[key][1])))
            d.ground(cv, cam, x0, x1, 0.3, np.inf, C[name], colour)
            if key in ("walk", "parking"):
                size = rng.uniform(0.5, 1.2)
                d.tile_joints(cv, cam, x0, x1, 0.3, st.z_end, size, rgb(colour, 0.8))
        if sd != st.sun:  # building shadow over part of the shaded sidewalk
            inner = p["front"] - rng.uniform(0.5, 4)
            cv.shadow(d.gquad(cam, x(sd, p["front"]), x(sd, inner), 0.3, st.z_end), 225)
    lanes = max(1, round(half / 1.1))
    for k in range(1, lanes):
        d.dashes(cv, cam, x(-1, half) + k * 2 * half / lanes, 0.12, 6.0, rng.uniform(0, 6),
                 (215, 215, 205))
    if rng.random() < 0.45:
        zc = rng.uniform(4, 16)
        d.crosswalk(cv, cam, x(-1, half), x(1, half), zc, rng.uniform(1.8, 3.0),
                    _jit(rng, _BASE["flat-crosswalk"], 0.03))
        for sd, p in st.sides.items():
            xp = x(sd, p["curb"][1] + 0.3)
            if rng.random() < 0.6:
                st.later(zc - 0.5, d.pole, xp, zc - 0.5, 2.3, _BASE["object-pole"], "light",
                         (0, 0, 0), int(rng.integers(3)))
            if rng.random() < 0.5:
                st.later(zc + 3.5, d.pole, xp, zc + 3.5, 2.5, _BASE["object-pole"], "square",
                         _SIGNS[0], 0)
    if st.z_end < 150:
        d.front_facade(cv, cam, x(-1, st.sides[-1]["back"]) - 20, x(1, st.sides[1]["back"]) + 20,
                       st.z_end, rng.uniform(8, 18), _jit(rng, _pick(rng, _FACADES)),
                       _jit(rng, _GLASS))


def _draw_front_row(st: _Street, sd: int, p: dict) -> None:
    """Buildings (windows, doors), walls, fences, hedges and gaps along the building line."""
    rng, cv, cam, x = st.rng, st.cv, st.cam, st.x
    light = 1.05 if sd == st.sun else 0.88
    if p["garden"] is not None:  # low border between sidewalk and front garden
        kind = "construction-wall" if rng.random() < 0.4 else "construction-fenceguardrail"
        d.side_wall(cv, cam, x(sd, p["walk"][1]), 0.3, st.z_end, rng.uniform(0.5, 1.1), C[kind],
                    _jit(rng, _BASE[kind], gain=light), 1.2 if "fence" in kind else 0.0)
    kinds = ["building"] * 6 + ["construction-wall", "construction-fenceguardrail", "hedge", "gap"]
    xf, z = x(sd, p["front"]), 0.3
    while z < st.z_end:
        z1 = min(st.z_end, z + rng.uniform(6, 22))
        kind = str(rng.choice(kinds))
        if kind == "building":
            door = rng.uniform(z + 1, z1 - 1) if z1 - z > 3 and rng.random() < 0.85 else None
            d.side_facade(cv, cam, xf, z, z1, rng.uniform(4.5, 13),
                          _jit(rng, _pick(rng, _FACADES), 0.06, light), _jit(rng, _GLASS), door,
                          _jit(rng, _BASE["construction-door"], 0.15, light))
        elif kind == "hedge":
            d.hedge(cv, cam, xf, xf + sd * 0.7, z, z1, rng.uniform(0.8, 1.8),
                    _jit(rng, _BASE["nature-vegetation"], 0.1))
        elif kind != "gap":
            d.side_wall(cv, cam, xf, z, z1, rng.uniform(0.8, 2.0), C[kind],
                        _jit(rng, _BASE[kind], gain=light), 1.5 if "fence" in kind else 0.0)
        z = z1


def _place_side_objects(st: _Street, sd: int, p: dict) -> None:
    """Trees, lamps, signs, bins, parked cars, people and bicycles on one side."""
    rng, x, z_end = st.rng, st.x, st.z_end
    edge = p["curb"][1] + (0.25 if p["verge"] is None else (p["verge"][1] - p["verge"][0]) / 2)
    if rng.random() < 0.55:
        for z in np.arange(rng.uniform(2, 8), z_end - 2, rng.uniform(6, 11)):
            r, trunk = rng.uniform(1.0, 1.9), rng.uniform(1.6, 2.6)
            blobs = [(rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.4), rng.uniform(0.5, 0.8),
                      rng.uniform(0.88, 1.15)) for _ in range(5)]
            st.later(z, d.tree, x(sd, edge), float(z), trunk, r, blobs,
                     _jit(rng, _BASE["nature-vegetation"], 0.1))
    if rng.random() < 0.5:
        for z in np.arange(rng.uniform(3, 12), z_end - 2, rng.uniform(12, 20)):
            st.later(z, d.pole, x(sd, edge - 0.1), float(z), rng.uniform(4.5, 6.0),
                     _BASE["object-pole"], "lamp", (0, 0, 0), 0, -sd)
    for _ in range(int(rng.integers(0, 3))):
        z, hgt = rng.uniform(3, 30), rng.uniform(2.2, 2.8)
        shape = str(rng.choice(["round", "square", "triangle"]))
        st.later(z, d.pole, x(sd, edge + 0.15), z, hgt, _jit(rng, _BASE["object-pole"]), shape,
                 _pick(rng, _SIGNS), 0)
    walk = p["walk"]
    if rng.random() < 0.3:
        z = rng.uniform(3, 20)
        st.later(z, d.bin_box, x(sd, walk[1] - 0.4), z, _jit(rng, _BASE["void-static"]))
    if p["parking"] is not None or st.half > 2:  # parked cars: parking strip or road edge
        lane_x = p["parking"][0] + 1.0 if p["parking"] is not None else st.half - 0.85
        z = rng.uniform(2.5, 7) if rng.random() < 0.65 else np.inf
        while z < min(z_end - 4, 60):
            st.later(z, d.car, x(sd, lane_x), z, _jit(rng, _pick(rng, _CARS), 0.05))
            z += 3.0 + rng.exponential(2.5)
    for _ in range(int(rng.integers(0, 5))):
        z = 2.5 + 30 * rng.random() ** 1.5
        st.later(z, d.person, x(sd, rng.uniform(walk[0] + 0.3, walk[1] - 0.3)), z,
                 rng.uniform(1.0, 1.3), *_person_args(rng), _jit(rng, (40, 30, 25)),
                 rng.uniform(-0.08, 0.08))
    if rng.random() < 0.3:  # a row of parked bicycles
        z0 = rng.uniform(3, 15)
        for k in range(int(rng.integers(1, 4))):
            st.later(z0 + 0.5 * k, d.bicycle, x(sd, walk[1] - 0.35), z0 + 0.5 * k,
                     _jit(rng, _pick(rng, _BIKES)), None)
    if rng.random() < 0.25:  # a cyclist
        z = rng.uniform(4, 25)
        bx = p["cycle"][0] + 0.5 if p["cycle"] is not None else st.half - 0.6
        st.later(z, d.bicycle, x(sd, bx), z, _jit(rng, _pick(rng, _BIKES)),
                 _person_args(rng, _RIDER, _RIDER))


def _compose(rng: np.random.Generator, cv: Canvas) -> Camera:
    """Draw one street far to near into ``cv``: background, ground, building rows, objects."""
    st = _new_street(rng, cv)
    _draw_back(st)
    _draw_surface(st)
    for sd, p in st.sides.items():
        _draw_front_row(st, sd, p)
        _place_side_objects(st, sd, p)
    edge_parking = st.half > 2 and any(p["parking"] is None for p in st.sides.values())
    margin = 2.1 if edge_parking else 0.8
    for _ in range(int(rng.integers(0, 3))):  # traffic in the lanes
        z = rng.uniform(8, min(60, st.z_end - 8))
        kind = "car" if rng.random() < 0.8 else str(rng.choice(["bus", "truck"]))
        colour = _jit(rng, {"car": _pick(rng, _CARS), "bus": _BUS, "truck": _TRUCK}[kind], 0.05)
        lane = margin + rng.random() * (2 * st.half - 2 * margin)
        if 2 * st.half > 2 * margin:  # else the road is too narrow for traffic
            st.later(z, d.car, st.x(-1, st.half) + lane, z, colour, kind)
    for _, draw in sorted(st.objects, key=lambda o: -o[0]):
        draw()
    return st.cam


def _smooth_noise(rng: np.random.Generator, grid: tuple[int, int], height: int, width: int
                  ) -> np.ndarray:
    """Gaussian noise on a coarse grid, bicubically upsampled: blotches of a fixed relative size."""
    small = Image.fromarray(rng.standard_normal(grid, dtype=np.float32))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))


def _texture(rng: np.random.Generator, cv: Canvas, cam: Camera) -> np.ndarray:
    """Turn the flat colour map into a photo-like image: sky, textures, shadows and lighting."""
    h, w = cv.h, cv.w
    lab = np.asarray(cv.label)
    img = np.asarray(cv.colour).astype(np.float32)
    rows = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h

    overcast = rng.random() < 0.15
    top = np.array((150, 162, 190) if overcast else (92, 140, 212), np.float32)
    hor = np.array((180, 192, 214) if overcast else (150, 185, 230), np.float32)
    top, hor = top * rng.uniform(0.94, 1.06, 3), hor * rng.uniform(0.95, 1.04, 3)
    t = np.clip(rows / max(cam.yh, 1e-3), 0, 1)[..., None] ** 0.8
    cloud = _smooth_noise(rng, (9, 7), h, w) - rng.uniform(0.3, 1.3)
    cloud = np.clip(cloud * 1.2, 0, 0.35)[..., None]
    sky = (top * (1 - t) + hor * t) * (1 - cloud) + 238 * cloud
    img = np.where((lab == C["sky"])[..., None], sky, img)

    tex = _TEX[lab]
    factor = 1 + tex[..., 0] * rng.standard_normal((h, w), dtype=np.float32)
    factor += tex[..., 1] * _smooth_noise(rng, (10, 10), h, w)
    factor += tex[..., 2] * _smooth_noise(rng, (48, 48), h, w)
    factor *= 1 - tex[..., 3] * (1 - np.asarray(cv.shade, np.float32) / 255)
    gain = rng.uniform(0.9, 1.1) * (1 + rng.uniform(-0.04, 0.04) * np.array((1, 0, -1), np.float32))
    light = gain * (1 + rng.uniform(-0.1, 0.1) * (rows[..., None] - 0.5))
    img *= factor[..., None]
    img *= light
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_scene(seed: int, height: int = 256, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (image uint8 H x W x 3 RGB, label uint8 H x W with ids 0..34)."""
    if height < 1 or width < 1:
        raise ValueError(f"scene size must be positive, got {height}x{width}")
    cv = Canvas(height, width)
    seed = int(seed) % (1 << 63)  # SeedSequence wants non-negative entries
    cam = _compose(np.random.default_rng([seed, 0]), cv)
    image = _texture(np.random.default_rng([seed, 1]), cv, cam)
    return image, np.array(cv.label, dtype=np.uint8)

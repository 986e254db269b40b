"""Colours and textures of the embedded street scenes: per-class base colours, per-instance
palettes, texture grain, and the measured reference colour of every class."""

from __future__ import annotations

import numpy as np

from sdm.data.classes import CLASS_ID, NUM_CLASSES

# Base colours, before per-instance jitter, texture and lighting. They are spread out in RGB so
# that every class has its own recognisable look (a model can learn class -> appearance and the
# nearest-reference-colour metric can tell classes apart); instances vary around them.
_BASE = {
    "flat-road": (82, 82, 88), "flat-sidewalk": (182, 174, 160), "flat-crosswalk": (244, 244, 240),
    "flat-cyclinglane": (182, 58, 48), "flat-parkingdriveway": (132, 114, 100),
    "flat-curb": (228, 228, 226), "construction-door": (74, 42, 26),
    "construction-wall": (128, 136, 164), "construction-fenceguardrail": (200, 152, 82),
    "object-pole": (60, 124, 118), "nature-vegetation": (60, 104, 40),
    "nature-terrain": (146, 156, 74), "void-static": (30, 84, 110),
}
_GLASS = (62, 72, 88)
_FACADES = ((152, 82, 60), (160, 90, 66), (146, 80, 62), (156, 88, 70))  # bricks
_CARS = ((36, 56, 142), (30, 44, 120), (44, 66, 156), (52, 48, 132), (40, 60, 128))  # blues
_BIKES = ((230, 120, 30), (214, 100, 24), (240, 140, 44))  # oranges
_SHIRTS = ((172, 48, 132), (132, 40, 152), (204, 84, 164), (112, 48, 112), (150, 70, 170))
_PANTS = ((92, 50, 96), (72, 42, 84), (110, 66, 112))
_RIDER = ((184, 232, 40), (200, 240, 64), (168, 220, 36))  # high-visibility lime
_SKIN = ((230, 190, 160), (200, 150, 110), (150, 100, 70), (95, 65, 45))
_SIGNS = ((206, 32, 40), (190, 24, 36), (220, 44, 52))  # reds
_BUS, _TRUCK = (240, 204, 40), (30, 140, 140)

# Texture per class: per-pixel grain, large blotches, leaf-size noise, receives ground shadows.
_TEX = np.zeros((NUM_CLASSES, 4), np.float32)
_TEX[:] = (0.03, 0.03, 0.0, 0.0)
for _name, _row in {
    "flat-road": (0.06, 0.05, 0, 1), "flat-sidewalk": (0.05, 0.05, 0, 1),
    "flat-crosswalk": (0.04, 0.04, 0, 1),
    "flat-cyclinglane": (0.06, 0.05, 0, 1), "flat-parkingdriveway": (0.07, 0.05, 0, 1),
    "flat-curb": (0.05, 0.03, 0, 1), "construction-building": (0.05, 0.06, 0, 0),
    "construction-wall": (0.07, 0.06, 0, 0), "nature-vegetation": (0.08, 0.08, 0.2, 0),
    "nature-terrain": (0.08, 0.08, 0.08, 1), "sky": (0.008, 0, 0, 0),
}.items():
    _TEX[CLASS_ID[_name]] = _row

# Mean colour of each class over 600 generated 96x96 scenes (`measure_reference_colours()`,
# re-run it after changing colours; a test checks they agree). Classes never drawn stay black.
_REFERENCE = {
    "flat-road": (81, 80, 86), "flat-sidewalk": (166, 159, 146), "flat-crosswalk": (225, 225, 222),
    "flat-cyclinglane": (170, 54, 44), "flat-parkingdriveway": (120, 103, 91),
    "flat-curb": (209, 209, 207), "human-person": (124, 57, 117), "human-rider": (176, 208, 49),
    "vehicle-car": (37, 43, 103), "vehicle-truck": (22, 106, 105), "vehicle-bus": (179, 153, 29),
    "vehicle-bicycle": (173, 91, 24), "construction-building": (137, 79, 63),
    "construction-door": (70, 39, 24), "construction-wall": (109, 116, 140),
    "construction-fenceguardrail": (180, 136, 73), "object-pole": (59, 124, 117),
    "object-trafficsign": (212, 78, 84), "object-trafficlight": (188, 155, 33),
    "nature-vegetation": (62, 101, 40), "nature-terrain": (137, 146, 69), "sky": (123, 161, 215),
    "void-static": (26, 76, 100),
}
CLASS_REFERENCE_COLOURS: np.ndarray = np.zeros((NUM_CLASSES, 3), np.uint8)
for _name, _colour in _REFERENCE.items():
    CLASS_REFERENCE_COLOURS[CLASS_ID[_name]] = _colour
GENERATED_CLASSES: tuple[int, ...] = tuple(sorted(CLASS_ID[n] for n in _REFERENCE))
"""Ids of the classes the generator draws (the others never appear in its label maps)."""


"""The 35-class table of `segments/sidewalk-semantic`, its palette, and mask colouring.

Ids follow the dataset's ``id2label.json``; 0 is ``unlabeled``. The palette is this
project's own: distinct, readable colours so that coloured masks can be read at a glance.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "unlabeled",
    "flat-road",
    "flat-sidewalk",
    "flat-crosswalk",
    "flat-cyclinglane",
    "flat-parkingdriveway",
    "flat-railtrack",
    "flat-curb",
    "human-person",
    "human-rider",
    "vehicle-car",
    "vehicle-truck",
    "vehicle-bus",
    "vehicle-tramtrain",
    "vehicle-motorcycle",
    "vehicle-bicycle",
    "vehicle-caravan",
    "vehicle-cartrailer",
    "construction-building",
    "construction-door",
    "construction-wall",
    "construction-fenceguardrail",
    "construction-bridge",
    "construction-tunnel",
    "construction-stairs",
    "object-pole",
    "object-trafficsign",
    "object-trafficlight",
    "nature-vegetation",
    "nature-terrain",
    "sky",
    "void-ground",
    "void-dynamic",
    "void-static",
    "void-unclear",
)
NUM_CLASSES: int = len(CLASS_NAMES)
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

PALETTE: np.ndarray = np.array(
    [
        (0, 0, 0),  # unlabeled
        (128, 64, 128),  # flat-road
        (244, 35, 232),  # flat-sidewalk
        (255, 255, 255),  # flat-crosswalk
        (60, 180, 255),  # flat-cyclinglane
        (250, 170, 160),  # flat-parkingdriveway
        (230, 150, 140),  # flat-railtrack
        (196, 196, 0),  # flat-curb
        (220, 20, 60),  # human-person
        (255, 0, 0),  # human-rider
        (0, 0, 142),  # vehicle-car
        (0, 0, 70),  # vehicle-truck
        (0, 60, 100),  # vehicle-bus
        (0, 80, 100),  # vehicle-tramtrain
        (0, 0, 230),  # vehicle-motorcycle
        (119, 11, 32),  # vehicle-bicycle
        (0, 0, 90),  # vehicle-caravan
        (0, 0, 110),  # vehicle-cartrailer
        (70, 70, 70),  # construction-building
        (140, 90, 40),  # construction-door
        (102, 102, 156),  # construction-wall
        (190, 153, 153),  # construction-fenceguardrail
        (150, 100, 100),  # construction-bridge
        (150, 120, 90),  # construction-tunnel
        (255, 140, 0),  # construction-stairs
        (153, 153, 153),  # object-pole
        (220, 220, 0),  # object-trafficsign
        (250, 170, 30),  # object-trafficlight
        (107, 142, 35),  # nature-vegetation
        (152, 251, 152),  # nature-terrain
        (70, 130, 180),  # sky
        (81, 0, 81),  # void-ground
        (111, 74, 0),  # void-dynamic
        (180, 165, 180),  # void-static
        (40, 40, 40),  # void-unclear
    ],
    dtype=np.uint8,
)
assert len(PALETTE) == NUM_CLASSES and len({tuple(c) for c in PALETTE}) == NUM_CLASSES

_COLOUR_KEYS = (PALETTE[:, 0].astype(np.int64) << 16) | (PALETTE[:, 1].astype(np.int64) << 8) | PALETTE[:, 2]
_KEY_ORDER = np.argsort(_COLOUR_KEYS)
_SORTED_KEYS = _COLOUR_KEYS[_KEY_ORDER]


def _more_colours(count: int) -> np.ndarray:
    """Colours for ids past the 35 classes, which models of other datasets use (converted
    official ADE20K and COCO-Stuff models: 151 and 183 classes): the PASCAL VOC bit pattern,
    leaving out the palette's own colours so that no two ids share one."""
    own = {tuple(c) for c in PALETTE}
    colours = []
    for i in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((i >> (3 * bit + channel)) & 1) << (7 - bit)
        if tuple(rgb) not in own:
            colours.append(rgb)
    return np.array(colours[:count], dtype=np.uint8)


#: PALETTE, then colours for the ids 35..255 that only models of other datasets use
FULL_PALETTE: np.ndarray = np.concatenate([PALETTE, _more_colours(256 - NUM_CLASSES)])


def colorize(label: np.ndarray) -> np.ndarray:
    """Map an H x W array of class ids (0..255) to an H x W x 3 uint8 RGB image with the palette."""
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= len(FULL_PALETTE)):
        raise ValueError(
            f"label ids must lie in 0..{len(FULL_PALETTE) - 1}, got {int(label.min())}..{int(label.max())}"
        )
    return FULL_PALETTE[label.astype(np.int64)]


def decolorize(rgb: np.ndarray) -> np.ndarray:
    """Invert :func:`colorize`: exact for palette colours, ``ValueError`` for any other colour."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 RGB mask, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pos = np.clip(np.searchsorted(_SORTED_KEYS, keys), 0, NUM_CLASSES - 1)
    found = _SORTED_KEYS[pos] == keys
    if not found.all():
        y, x = np.argwhere(~found)[0]
        raise ValueError(
            f"colour {tuple(int(v) for v in rgb[y, x])} at pixel (row {y}, col {x}) is not in the "
            f"sidewalk palette ({int((~found).sum())} such pixels); expected one of the "
            f"{NUM_CLASSES} palette colours of sdm.data.classes.PALETTE"
        )
    return _KEY_ORDER[pos].astype(np.uint8)

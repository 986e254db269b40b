"""Procedural first-person street scenes in the 35-class scheme of ``segments/sidewalk-semantic``.

Why: the whole pipeline (prepare, train, sample, metrics) must run offline on a laptop, so it
needs data that looks like the real thing in layout and class appearance: a perspective street
with sidewalks, curbs, crosswalks, buildings, vegetation, sky, poles, signs, cars, people and
bicycles. Each class keeps a recognisable base appearance (:data:`CLASS_REFERENCE_COLOURS`) so a
model can learn class -> appearance, while textures, lighting and per-instance colours vary.

Layout (horizon, vanishing point, street cross-section, objects) comes from one random stream,
textures from another, both seeded by the scene seed: same seed and size -> identical scene, and
the geometry is relative, so a scene looks the same at 64x64 and at 1080x1920 (only the pixel
grain differs). Run ``sdm-scenes --num 16 --size 256 --out DIR`` to look at some.
"""

from sdm.data.scenes.palette import CLASS_REFERENCE_COLOURS, GENERATED_CLASSES
from sdm.data.scenes.sets import measure_reference_colours, scene_grid, scenes_dataset
from sdm.data.scenes.street import generate_scene

__all__ = [
    "CLASS_REFERENCE_COLOURS", "GENERATED_CLASSES", "generate_scene", "measure_reference_colours",
    "scene_grid", "scenes_dataset",
]

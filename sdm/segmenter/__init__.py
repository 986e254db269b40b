"""The segmenter that measures semantic consistency: networks, training, the cache of trained ones, held-out scoring and the blur control that calibrates it."""

"""The words of the ``shapes`` world: shapes, colours, sizes, relations and caption categories.

Shared by the renderer (:mod:`diffjax.data.shapes`) and the captions
(:mod:`diffjax.data.shapes_captions`); an index into these tuples is what the scene arrays store.
"""
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = ("small", "large")
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left", "right", "above", "below")

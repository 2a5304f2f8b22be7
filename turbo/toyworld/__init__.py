"""ToyWorld: procedural toy videos with attribute captions (the data and prompts of the embedded toy model)."""

from turbo.toyworld.videos import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    ObjectSpec,
    ParsedCaption,
    ParsedObject,
    VideoSpec,
    allowed_colours,
    caption,
    parse_caption,
    render,
    sample_spec,
    sample_videos,
    trajectory,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "MOTIONS",
    "SHAPES",
    "ObjectSpec",
    "ParsedCaption",
    "ParsedObject",
    "VideoSpec",
    "allowed_colours",
    "caption",
    "parse_caption",
    "render",
    "sample_spec",
    "sample_videos",
    "trajectory",
]

"""Procedural ToyWorld videos: 1–2 coloured shapes moving on a plain background, with attribute captions.

Coordinates of an `ObjectSpec` are fractions of the frame: `x` of the width, `y` of the height (the object's centre at
the first frame), `size` of the shorter frame side (the side of the object's bounding box). Every shape fills a
`size × size` box centred on its centre, so keeping that box inside the frame keeps the shape inside.

Everything here is deterministic for a `torch.Generator` seed and rendered with batched tensor ops over a pixel grid,
anti-aliased through a signed distance per pixel (alpha = clamp(0.5 − distance, 0, 1)).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 235),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 215, 225),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}

MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "growing", "bouncing")

#: phrase of each motion in a caption
MOTION_PHRASES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "still": "standing still",
    "growing": "growing",
    "bouncing": "bouncing",
}

TRAVEL = 0.4  # left/right/up/down: fraction of the frame crossed over the clip, at constant speed
GROWTH = 1.8  # growing: size at the last frame / size at the first
BOUNCE_HEIGHT = 0.2  # bouncing: hop height, fraction of the frame height
BOUNCE_HOPS = 2  # bouncing: number of |sin| hops over the clip
MIN_CONTRAST = 100.0  # an object colour must be at least this far (RGB, 0–255) from the background
EDGE_MARGIN = 0.03  # objects' boxes stay this far inside the frame
GAP = 0.05  # two objects' boxes stay this far apart (in x or in y) at every time


def _dist(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.sqrt(sum((float(p) - float(q)) ** 2 for p, q in zip(a, b, strict=True)))


def allowed_colours(background: str) -> tuple[str, ...]:
    """Object colours that contrast with `background` (every colour, with the current palettes)."""
    bg = BACKGROUNDS[background]
    return tuple(name for name, rgb in COLOURS.items() if _dist(rgb, bg) >= MIN_CONTRAST)


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    motion: str
    x: float
    y: float
    size: float

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known: {', '.join(COLOURS)}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; known: {', '.join(MOTIONS)}")
        if not self.size > 0:
            raise ValueError(f"size must be positive, got {self.size}")


@dataclass(frozen=True)
class VideoSpec:
    objects: tuple[ObjectSpec, ...]
    background: str

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; known: {', '.join(BACKGROUNDS)}")
        if not self.objects:
            raise ValueError("a VideoSpec needs at least one object")


@dataclass(frozen=True)
class ParsedObject:
    """What a caption says about one object; None where the caption did not say (or said something unknown)."""

    shape: str | None
    colour: str | None
    motion: str | None


@dataclass(frozen=True)
class ParsedCaption:
    objects: tuple[ParsedObject, ...]
    background: str | None
    unknown: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------------- captions


def caption(spec: VideoSpec) -> str:
    """'a red circle moving left and a blue square standing still on a gray background'."""
    parts = [f"a {o.colour} {o.shape} {MOTION_PHRASES[o.motion]}" for o in spec.objects]
    return f"{' and '.join(parts)} on a {spec.background} background"


_ALIASES = {"grey": "gray", "purple": "magenta", "pink": "magenta", "rhombus": "diamond", "box": "square"}
_FILLER = {"a", "an", "the", "and", "on", "background", "moving", "standing", "is", "with", "of"}
_MOTION_WORDS = {"left": "left", "right": "right", "up": "up", "down": "down", "still": "still",
                 "growing": "growing", "bouncing": "bouncing", "static": "still", "stationary": "still",
                 "grows": "growing", "bounces": "bouncing"}


def parse_caption(text: str) -> ParsedCaption:
    """The inverse of `caption`, tolerant: unknown words give a warning (never an error) and are skipped.

    Objects are split on 'and'; the background is the known colour word right before 'background'.
    """
    words = [_ALIASES.get(w, w) for w in re.findall(r"[a-z]+", str(text).lower())]
    background = None
    unknown: list[str] = []
    if "background" in words:
        i = len(words) - 1 - words[::-1].index("background")
        bg_words = words[:i]
        # the background phrase starts at the last 'on' before 'background'
        j = len(bg_words) - 1 - bg_words[::-1].index("on") if "on" in bg_words else max(i - 1, 0)
        for w in words[j:i]:
            if w in BACKGROUNDS:
                background = w
            elif w not in _FILLER:
                unknown.append(w)
        for w in words[i + 1:]:
            if w not in _FILLER:
                unknown.append(w)
        words = words[:j]
    segments: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            segments.append([])
        else:
            segments[-1].append(w)
    objects = []
    for seg in segments:
        shape = colour = motion = None
        for w in seg:
            if w in SHAPES and shape is None:
                shape = w
            elif w in COLOURS and colour is None:
                colour = w
            elif w in _MOTION_WORDS and motion is None:
                motion = _MOTION_WORDS[w]
            elif w not in _FILLER:
                unknown.append(w)
        if shape is not None or colour is not None or motion is not None:
            objects.append(ParsedObject(shape, colour, motion))
    if unknown:
        warnings.warn(f"caption {text!r}: unknown words ignored: {', '.join(unknown)}", stacklevel=2)
    if not objects:
        warnings.warn(f"caption {text!r}: no object (colour, shape or motion) recognised", stacklevel=2)
    return ParsedCaption(tuple(objects), background, tuple(unknown))


# ------------------------------------------------------------------------------------------------------- trajectories


def _offsets(motion: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre offset (dx, dy, in frame fractions) and size factor at times t ∈ [0, 1]."""
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    if motion == "left":
        return -TRAVEL * t, zero, one
    if motion == "right":
        return TRAVEL * t, zero, one
    if motion == "up":
        return zero, -TRAVEL * t, one
    if motion == "down":
        return zero, TRAVEL * t, one
    if motion == "growing":
        return zero, zero, 1 + (GROWTH - 1) * t
    if motion == "bouncing":
        return zero, -BOUNCE_HEIGHT * torch.sin(math.pi * BOUNCE_HOPS * t).abs(), one
    return zero, zero, one  # still


def trajectory(obj: ObjectSpec, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre x, centre y, size) of `obj` at times t ∈ [0, 1], frame fractions as in ObjectSpec."""
    dx, dy, k = _offsets(obj.motion, t)
    return obj.x + dx, obj.y + dy, obj.size * k


def _times(frames: int, device=None) -> torch.Tensor:
    if frames == 1:
        return torch.zeros(1, device=device)
    return torch.arange(frames, device=device, dtype=torch.float32) / (frames - 1)


# ----------------------------------------------------------------------------------------------------------- sampling


def _pick(generator: torch.Generator, options) -> object:
    options = list(options)
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _boxes_apart(a: ObjectSpec, b: ObjectSpec, t: torch.Tensor) -> bool:
    ax, ay, asz = trajectory(a, t)
    bx, by, bsz = trajectory(b, t)
    reach = (asz + bsz) / 2 + GAP
    apart = ((ax - bx).abs() > reach) | ((ay - by).abs() > reach)
    return bool(apart.all())


def _sample_object(generator: torch.Generator, colour: str, motion: str, small: bool = False) -> ObjectSpec | None:
    shape = _pick(generator, SHAPES)
    lo, hi = (0.12, 0.18) if motion == "growing" else (0.13, 0.25)
    size = _uniform(generator, lo, 0.15 if small else hi)
    t = torch.linspace(0, 1, 65)
    dx, dy, k = _offsets(motion, t)
    half = size * float(k.max()) / 2 + EDGE_MARGIN
    x_lo, x_hi = half - float(dx.min()), 1 - half - float(dx.max())
    y_lo, y_hi = half - float(dy.min()), 1 - half - float(dy.max())
    if x_lo > x_hi or y_lo > y_hi:
        return None
    return ObjectSpec(shape, colour, motion, _uniform(generator, x_lo, x_hi), _uniform(generator, y_lo, y_hi), size)


def _place_objects(generator: torch.Generator, num_objects: int, background: str, t: torch.Tensor):
    """`num_objects` non-overlapping objects of distinct colours, or None when one found no room."""
    objects: list[ObjectSpec] = []
    for _ in range(num_objects):
        used = {o.colour for o in objects}
        colours = [c for c in allowed_colours(background) if c not in used]
        placed = None
        for attempt in range(400):
            motion = "still" if attempt >= 300 else _pick(generator, MOTIONS)
            cand = _sample_object(generator, _pick(generator, colours), motion, small=attempt >= 200)
            if cand is not None and all(_boxes_apart(cand, o, t) for o in objects):
                placed = cand
                break
        if placed is None:
            return None
        objects.append(placed)
    return objects


def sample_spec(generator: torch.Generator, num_objects: int) -> VideoSpec:
    """A random VideoSpec: objects of distinct colours that stay inside the frame and never overlap."""
    if num_objects < 1 or num_objects > len(COLOURS):
        raise ValueError(f"num_objects must be in 1..{len(COLOURS)}, got {num_objects}")
    background = _pick(generator, BACKGROUNDS)
    t = torch.linspace(0, 1, 65)
    for _ in range(50):  # a crowded frame can leave no room for the last object: start the objects over
        objects = _place_objects(generator, num_objects, background, t)
        if objects is not None:
            break
    else:  # pragma: no cover - needs many objects in one frame
        raise RuntimeError(f"could not place {num_objects} non-overlapping objects")
    return VideoSpec(tuple(objects), background)


# ---------------------------------------------------------------------------------------------------------- rendering


def _signed_distance(shape_id: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance in pixels (negative inside) of every shape, selected by `shape_id`."""
    ax, ay = dx.abs(), dy.abs()
    circle = torch.sqrt(dx * dx + dy * dy) - half
    square = torch.maximum(ax, ay) - half
    diamond = (ax + ay - half) / math.sqrt(2.0)
    # triangle pointing up: apex (0, -half), base corners (±half, +half)
    triangle = torch.maximum(dy - half, (2 * ax - dy - half) / math.sqrt(5.0))
    out = circle
    for i, sd in ((SHAPES.index("square"), square), (SHAPES.index("triangle"), triangle),
                  (SHAPES.index("diamond"), diamond)):
        out = torch.where(shape_id == i, sd, out)
    return out


def render(specs: list[VideoSpec], frames: int, height: int, width: int, device="cpu") -> torch.Tensor:
    """Float videos [N, F, 3, H, W] in [0, 1], one per spec; anti-aliased shapes composited in object order."""
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"frames, height and width must be positive, got {frames}, {height}, {width}")
    specs = list(specs)
    out = torch.empty(len(specs), frames, 3, height, width, device=device)
    if not specs:
        return out
    t = _times(frames, device)
    scale = float(min(height, width))
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, height, 1) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, 1, width) + 0.5
    chunk = max(1, 4_000_000 // (frames * height * width))
    for start in range(0, len(specs), chunk):
        part = specs[start:start + chunk]
        n = len(part)
        bg = torch.tensor([BACKGROUNDS[s.background] for s in part], device=device, dtype=torch.float32) / 255
        video = bg.view(n, 1, 3, 1, 1).expand(n, frames, 3, height, width).clone()
        for k in range(max(len(s.objects) for s in part)):
            present = torch.zeros(n, device=device)
            cx = torch.zeros(n, frames, device=device)
            cy = torch.zeros(n, frames, device=device)
            size = torch.zeros(n, frames, device=device)
            shape_id = torch.zeros(n, dtype=torch.long, device=device)
            colour = torch.zeros(n, 3, device=device)
            for i, s in enumerate(part):
                if k < len(s.objects):
                    o = s.objects[k]
                    present[i] = 1
                    cx[i], cy[i], size[i] = trajectory(o, t)
                    shape_id[i] = SHAPES.index(o.shape)
                    colour[i] = torch.tensor(COLOURS[o.colour], dtype=torch.float32, device=device) / 255
            dx = xs - (cx * width).view(n, frames, 1, 1)
            dy = ys - (cy * height).view(n, frames, 1, 1)
            half = (size * scale / 2).view(n, frames, 1, 1)
            sd = _signed_distance(shape_id.view(n, 1, 1, 1), dx, dy, half)
            alpha = (0.5 - sd).clamp(0, 1) * present.view(n, 1, 1, 1)
            alpha = alpha.unsqueeze(2)  # [n, F, 1, H, W]
            video = video * (1 - alpha) + colour.view(n, 1, 3, 1, 1) * alpha
        out[start:start + n] = video
    return out.clamp_(0, 1)


def sample_videos(seed: int, count: int, frames: int, height: int, width: int, num_objects=(1, 2), device="cpu"):
    """(videos [count, F, 3, H, W] float in [0, 1], specs, captions), deterministic for `seed`.

    `num_objects` is an int or a sequence of ints to draw from uniformly for each video.
    """
    generator = torch.Generator().manual_seed(int(seed))
    choices = [num_objects] if isinstance(num_objects, int) else list(num_objects)
    specs = [sample_spec(generator, int(_pick(generator, choices))) for _ in range(count)]
    videos = render(specs, frames, height, width, device=device)
    return videos, specs, [caption(s) for s in specs]

"""Token geometry of a video transformer call: latent frames × patch rows × patch columns (+ text tokens)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import GeometryError


@dataclass(frozen=True)
class TokenGeometry:
    """Post-patch grid of the video tokens, in the (frame, row, column) row-major order the transformers use."""

    frames: int
    height: int
    width: int

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width

    def __str__(self) -> str:
        return f"{self.frames}×{self.height}×{self.width} = {self.num_tokens:,} tokens"


def geometry_from_latents(shape: tuple[int, ...], patch: tuple[int, int, int]) -> TokenGeometry:
    """Grid of a latent tensor [B, C, F, H, W] patchified by `patch` = (t, h, w)."""
    if len(shape) != 5:
        raise GeometryError(f"expected video latents [B, C, F, H, W], got shape {tuple(shape)}.")
    _, _, frames, height, width = shape
    pt, ph, pw = patch
    if frames % pt or height % ph or width % pw:
        raise GeometryError(
            f"latent grid {frames}×{height}×{width} is not divisible by the patch size {pt}×{ph}×{pw}; "
            "use a height and width that are multiples of 16."
        )
    return TokenGeometry(frames // pt, height // ph, width // pw)


def check_video_size(
    height: int, width: int, num_frames: int, *, spatial_multiple: int = 16, frame_step: int = 4
) -> None:
    """Raise a one-sentence `GeometryError` unless height/width are multiples of 16 and frames = 4k + 1."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % spatial_multiple:
            raise GeometryError(f"{name}={value} must be a positive multiple of {spatial_multiple} (e.g. 480 or 832).")
    if num_frames < 1 or (num_frames - 1) % frame_step:
        lower = max(1, num_frames - (num_frames - 1) % frame_step)
        raise GeometryError(
            f"num_frames={num_frames} must be {frame_step}k+1 (e.g. 17, 33, 81); the nearest below is {lower}."
        )


def video_token_count(height: int, width: int, num_frames: int, *, vae_spatial: int = 8, vae_temporal: int = 4,
                      patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    """Video tokens of one sample for a Wan-style VAE (8× spatial, 4× temporal) and patch size."""
    latent_frames = (num_frames - 1) // vae_temporal + 1
    return (latent_frames // patch[0]) * (height // vae_spatial // patch[1]) * (width // vae_spatial // patch[2])

"""The loss curve PNG posted with each checkpoint: pure Pillow, no torch.

Separate from gpu/training/trainer.py because it is reporting, not training: it runs on the encoder thread
(gpu/training/session.py) and is tested on its own.
"""

from __future__ import annotations

import io
import math

__all__ = ["render_loss_curve"]


def _moving_average(values: list[float], window: int) -> list[float]:
    averaged, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averaged.append(total / min(index + 1, window))
    return averaged


def render_loss_curve(losses: list[float], width: int = 480, height: int = 240) -> bytes:
    """A small PNG: raw losses in grey, their moving average in blue, min/max and step count labelled."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 48, 12, width - 12, height - 24
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    values = [value for value in losses if math.isfinite(value)]
    if values:
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        count = len(values)

        def point(index: int, value: float) -> tuple[float, float]:
            x = left + (right - left) * (index / max(count - 1, 1))
            return x, bottom - (bottom - top) * (value - low) / span

        for index, value in enumerate(values):
            draw.point(point(index, value), fill=(190, 190, 190))
        averaged = _moving_average(values, max(1, count // 20))
        if count > 1:
            draw.line([point(i, v) for i, v in enumerate(averaged)], fill=(30, 90, 200), width=2)
        draw.text((4, top), f"{high:.3f}", fill="black")
        draw.text((4, bottom - 10), f"{low:.3f}", fill="black")
        draw.text((left, bottom + 6), f"loss, {count} steps (moving average of {max(1, count // 20)})", fill="black")
    else:
        draw.text((left + 8, top + 8), "no steps yet", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

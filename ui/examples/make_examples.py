"""Draw the bundled example images (``cat.png``, ``mountains.png``, ``flower.png``), 256 × 256.

Drawn by the project with PIL shapes, so they ship under the project's own licence:
``python -m vslerp.ui.examples.make_examples`` rewrites them beside this file.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SIZE = 256


def _gradient(top, bottom) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        draw.line([(0, y), (SIZE, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return image


def cat() -> Image.Image:
    image = _gradient((250, 236, 210), (236, 200, 160))
    d = ImageDraw.Draw(image)
    fur, dark = (232, 140, 60), (120, 64, 30)
    d.polygon([(58, 110), (78, 30), (122, 86)], fill=fur, outline=dark, width=3)  # ears
    d.polygon([(198, 110), (178, 30), (134, 86)], fill=fur, outline=dark, width=3)
    d.polygon([(72, 96), (82, 52), (108, 86)], fill=(248, 180, 170))
    d.polygon([(184, 96), (174, 52), (148, 86)], fill=(248, 180, 170))
    d.ellipse([40, 64, 216, 228], fill=fur, outline=dark, width=3)  # head
    for x in (92, 164):  # eyes
        d.ellipse([x - 18, 118, x + 18, 150], fill=(120, 200, 90), outline=dark, width=2)
        d.ellipse([x - 5, 120, x + 5, 148], fill=(20, 20, 20))
    d.polygon([(118, 168), (138, 168), (128, 180)], fill=(230, 110, 120))  # nose
    d.arc([104, 170, 128, 194], 20, 160, fill=dark, width=2)
    d.arc([128, 170, 152, 194], 20, 160, fill=dark, width=2)
    for side in (-1, 1):  # whiskers
        for k in (-1, 0, 1):
            d.line([(128 + side * 28, 180 + 4 * k), (128 + side * 96, 170 + 14 * k)], fill=dark, width=2)
    return image


def mountains() -> Image.Image:
    image = _gradient((90, 150, 230), (250, 200, 150))
    d = ImageDraw.Draw(image)
    d.ellipse([160, 40, 210, 90], fill=(255, 240, 170))  # sun
    d.polygon([(0, 200), (70, 90), (130, 170), (190, 70), (256, 160), (256, 256), (0, 256)],
              fill=(80, 90, 120))
    d.polygon([(70, 90), (52, 118), (88, 118)], fill=(245, 245, 250))  # snow caps
    d.polygon([(190, 70), (168, 104), (212, 104)], fill=(245, 245, 250))
    d.polygon([(0, 230), (90, 180), (180, 220), (256, 190), (256, 256), (0, 256)], fill=(60, 130, 70))
    return image.filter(ImageFilter.SMOOTH)


def flower() -> Image.Image:
    image = _gradient((200, 235, 200), (120, 180, 110))
    d = ImageDraw.Draw(image)
    d.line([(128, 140), (128, 256)], fill=(40, 110, 40), width=8)
    d.ellipse([128, 190, 180, 214], fill=(60, 140, 60))
    for k in range(8):
        a = 2 * math.pi * k / 8
        x, y = 128 + 46 * math.cos(a), 110 + 46 * math.sin(a)
        d.ellipse([x - 28, y - 28, x + 28, y + 28], fill=(220, 60, 110), outline=(150, 30, 70), width=2)
    d.ellipse([100, 82, 156, 138], fill=(250, 200, 40), outline=(180, 120, 20), width=3)
    return image


EXAMPLES = {"cat.png": cat, "mountains.png": mountains, "flower.png": flower}


def main() -> None:
    for name, draw in EXAMPLES.items():
        draw().save(HERE / name, optimize=True)
        print(HERE / name)


if __name__ == "__main__":
    main()

"""Draw the demo garment (a plain T-shirt on white, 768x1024) shipped in assets/garments.

The project needs a licence-clean garment photo for `test_input.json`, the README demo and
smoke tests; drawing it keeps it ours. Run: `python assets/draw_garment.py`.
"""

from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 768, 1024
SHIRT = [
    (254, 150), (330, 130), (384, 175), (438, 130), (514, 150),  # neckline and shoulders
    (690, 300), (610, 400), (560, 345),  # right sleeve
    (560, 880), (208, 880),  # hem
    (208, 345), (158, 400), (78, 300),  # left sleeve
]


def draw_tshirt(colour: tuple[int, int, int] = (40, 90, 200)) -> Image.Image:
    """Return a flat-coloured T-shirt centred on a white 3:4 canvas."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.polygon(SHIRT, fill=colour, outline=(20, 45, 100))
    draw.ellipse((330, 120, 438, 200), fill="white")  # collar opening
    draw.line([(384, 300), (384, 860)], fill=(30, 70, 160), width=4)  # a seam for texture
    return image


if __name__ == "__main__":
    out = Path(__file__).parent / "garments" / "0_tshirt.png"
    draw_tshirt().save(out)
    print(out)

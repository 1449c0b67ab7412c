"""Label ids of the human-parsing maps, named once so the mask rules read like the paper's prose.

The parse map the mask rules consume carries the 18 ATR classes of the SCHP ATR model plus one
class the published code adds itself: 18 = neck, derived from the LIP model (the ATR model has
no neck class, it calls the neck "face"). The LIP model is used for nothing else.
"""

from typing import Final

# ATR classes (SCHP `parsing_atr.onnx`, 18 output channels).
BACKGROUND: Final = 0
HAT: Final = 1
HAIR: Final = 2
SUNGLASSES: Final = 3
UPPER_CLOTHES: Final = 4
SKIRT: Final = 5
PANTS: Final = 6
DRESS: Final = 7
BELT: Final = 8
LEFT_SHOE: Final = 9
RIGHT_SHOE: Final = 10
FACE: Final = 11
LEFT_LEG: Final = 12
RIGHT_LEG: Final = 13
LEFT_ARM: Final = 14
RIGHT_ARM: Final = 15
BAG: Final = 16
SCARF: Final = 17
# Added by the published post-processing: ATR face pixels that LIP does not call face.
NECK: Final = 18

ATR_NUM_CLASSES: Final = 18
LIP_NUM_CLASSES: Final = 20
LIP_FACE: Final = 13

ATR_NAMES: Final[tuple[str, ...]] = (
    "background", "hat", "hair", "sunglasses", "upper_clothes", "skirt", "pants", "dress", "belt",
    "left_shoe", "right_shoe", "face", "left_leg", "right_leg", "left_arm", "right_arm", "bag", "scarf",
    "neck",
)  # fmt: skip
"""Name of each label of the parse map, indexed by label id (0-18)."""

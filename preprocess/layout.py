"""Where the published preprocessing networks lie, relative to the checkpoints root."""

PARSING_ATR = "humanparsing/parsing_atr.onnx"
PARSING_LIP = "humanparsing/parsing_lip.onnx"
BODY_POSE = "openpose/ckpts/body_pose_model.pth"

PREPROCESS_FILES: tuple[str, ...] = (PARSING_ATR, PARSING_LIP, BODY_POSE)

"""What ships with the package and what is installed beside it; imports nothing heavy, so every module (and the
torch-free ONNX deployment) can ask without importing the package's transformers face."""

from importlib.util import find_spec
from pathlib import Path

# Without transformers or torch (a deployment with onnxruntime, NumPy, Pillow and tokenizers only,
# `metris-hf[onnxruntime]`) the package holds `onnx_runtime` and the embedded checkpoint's location.
HAS_TRANSFORMERS = find_spec("transformers") is not None and find_spec("torch") is not None

EMBEDDED_CHECKPOINT = Path(__file__).parent / "checkpoints" / "metris-tiny-synthetic"


def embedded_checkpoint() -> Path:
    """The small checkpoint shipped inside the package (trained on the synthetic set): `make demo` runs on it."""
    if not (EMBEDDED_CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(
            f"no embedded checkpoint at {EMBEDDED_CHECKPOINT}: this install lacks package data "
            "(reinstall metris-hf, or pass a checkpoint folder explicitly)"
        )
    return EMBEDDED_CHECKPOINT

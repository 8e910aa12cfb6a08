"""DeblurGAN in plain PyTorch: networks, losses, blur synthesis, data, metrics, checkpoints, inference."""

__version__ = "0.1.0"

from .checkpoint import load_generator, save_generator  # noqa: E402
from .config import CriticConfig, GeneratorConfig  # noqa: E402
from .inference import Deblurrer  # noqa: E402
from .networks import Critic, Generator, count_parameters  # noqa: E402

__all__ = [
    "Critic",
    "CriticConfig",
    "Deblurrer",
    "Generator",
    "GeneratorConfig",
    "count_parameters",
    "load_generator",
    "save_generator",
]

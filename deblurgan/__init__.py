"""DeblurGAN in plain PyTorch: networks, losses, blur synthesis, data, metrics, checkpoints."""

from .config import CriticConfig, GeneratorConfig
from .networks import Critic, Generator, count_parameters

__all__ = ["Critic", "CriticConfig", "Generator", "GeneratorConfig", "count_parameters"]
__version__ = "0.1.0"

"""User-facing errors: CLIs print them as one line and exit non-zero."""


class DeblurGANError(Exception):
    """A problem with the user's input (file, config, checkpoint), not a bug."""


class CheckpointError(DeblurGANError):
    """A checkpoint that is missing, corrupt, or not a DeblurGAN model."""

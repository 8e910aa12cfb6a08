"""User-facing errors: CLIs print them as one line and exit non-zero."""


class DeblurGANError(Exception):
    """A problem with the user's input (file, config, checkpoint), not a bug."""


class CheckpointError(DeblurGANError):
    """A checkpoint that is missing, corrupt, or not a DeblurGAN model."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), at most `limit` characters."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]

"""Shared CLI plumbing: user errors become one line on stderr and a non-zero exit, never a traceback.

Lives in `deblurgan` so that both `engine` and `export` CLIs use the same contract."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import DeblurGANError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; map DeblurGANError (and friends) to `error: <one line>` and exit code 2."""
    try:
        return int(main(argv) or 0)
    except DeblurGANError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("error: out of memory (try --tile or a smaller batch)", file=sys.stderr)
        return 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose bad options raise DeblurGANError: under run_cli, one line `error: ...` and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise DeblurGANError(f"{message} (see {self.prog} --help)")

"""CLI subcommands for this step (filled in by its owner)."""


def register(sub):
    """Add this module's subcommands to the argparse sub-parsers sub."""

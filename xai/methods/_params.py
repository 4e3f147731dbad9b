"""Shorthand for the method modules' parameter tables. Torch-free.

Most string parameters of the catalogue pick one of a few names; ``choice`` says that once, so such a
parameter is one short call instead of a ``Param`` spelling out its type and ``choices=``.
"""

from xai.methods.spec import Param


def choice(name: str, default: str, description: str, choices: tuple[str, ...]) -> Param:
    """A string parameter that must be one of ``choices``."""
    return Param(name, "str", default, description, choices=choices)

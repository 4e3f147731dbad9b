"""JSON sent by callers, read strictly: finite numbers only, and every failure an input error. Torch-free.

Python's ``json`` accepts ``NaN`` and ``Infinity``, turns ``1e400`` into infinity, raises
``RecursionError`` for deep nesting and a bare ``ValueError`` for integers over its digit limit; each of
those reached callers as a 500 or as a job that failed later. Here each is refused up front.
"""

from __future__ import annotations

import json
import math
from typing import Any

from xai.errors import InvalidInput


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _no_constant(name: str) -> float:
    raise _NotFinite(name)


def loads(text: str | bytes, *, what: str, code: str) -> Any:
    """Parse caller-sent JSON; ``what`` names it in messages ("params", "the manifest").

    Raises:
        InvalidInput: with ``code`` for invalid JSON, NaN/Infinity or a number too large for a float,
            nesting too deep to parse, or an integer over Python's digit limit.
    """
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except _NotFinite as error:
        raise InvalidInput(f"{what} holds {str(error)[:20]}: numbers must be finite", code=code) from None
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{what} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
                           code=code) from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", code=code) from None
    except (ValueError, UnicodeDecodeError):  # an integer over the digit limit; bytes that are not UTF-8
        raise InvalidInput(f"{what} holds an integer with too many digits or is not UTF-8 text", code=code) from None

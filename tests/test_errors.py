"""The error vocabulary: one enumeration, used everywhere, documented in the README as generated."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO
from xai.errors import ErrorCode, InvalidInput, ServiceError, markdown_table

SOURCES = [p for folder in ("app", "service", "workers", "models", "xai") for p in (REPO / folder).rglob("*.py")]
CODE_LITERAL = re.compile(r'code="([a-z_]+)"')


def _source_text() -> str:
    return "\n".join(p.read_text() for p in SOURCES if p.name != "errors.py")


def test_every_code_raised_in_the_source_is_a_member():
    used = set(CODE_LITERAL.findall(_source_text()))
    assert used, "the scan found no raise site"
    assert used <= {code.value for code in ErrorCode}, sorted(used - {code.value for code in ErrorCode})


def test_every_member_is_used_somewhere():
    text = _source_text()
    unused = [code.value for code in ErrorCode
              if f'"{code.value}"' not in text and f"ErrorCode.{code.name}" not in text]
    assert not unused, f"codes nothing raises: {unused}"


def test_readme_error_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    between = readme.split("<!-- error-table:start -->\n")[1].split("\n<!-- error-table:end -->")[0]
    assert between == markdown_table(), "regenerate it: python -m xai.errors"


@pytest.mark.parametrize(("code", "status"), [("invalid_params", 422), ("unknown_job", 404),
                                              ("payload_too_large", 413), ("unsupported_format", 415),
                                              ("insufficient_scope", 403), ("service_unavailable", 503)])
def test_a_raised_error_answers_with_its_codes_status_and_message(code, status):
    error = InvalidInput(code=code)
    assert error.http_status == status
    assert error.to_dict() == {"code": code, "message": ErrorCode(code).message}
    assert InvalidInput("the field x is wrong", code=code).to_dict()["message"] == "the field x is wrong"


def test_an_unknown_code_is_refused_at_the_raise_site():
    with pytest.raises(ValueError):
        ServiceError("made up", code="not_a_code")

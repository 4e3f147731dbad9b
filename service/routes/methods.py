"""GET /v1/methods: the method catalogue."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ExplainCaller

from xai.methods import CATALOGUE

router = APIRouter(prefix="/v1/methods", tags=["methods"])


@router.get("")
def list_methods(_: ExplainCaller) -> dict:
    """Every method: its queue, its parameters (name, type, default, range) and whether it needs artifacts."""
    return {"methods": [spec.describe() for spec in CATALOGUE.values()]}

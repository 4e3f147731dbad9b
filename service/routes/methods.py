"""GET /v1/methods: the method catalogue."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ExplainCaller
from service.schemas import MethodInfo, MethodList, error_responses
from xai.methods import CATALOGUE

router = APIRouter(prefix="/v1/methods", tags=["methods"])


@router.get("", responses=error_responses(401, 403, 500))
def list_methods(_: ExplainCaller) -> MethodList:
    """Every method: its queue, its parameters (name, type, default, range, and as JSON Schema) and whether
    it needs artifacts or a target layer."""
    return MethodList(methods=[MethodInfo.model_validate(spec.describe()) for spec in CATALOGUE.values()])

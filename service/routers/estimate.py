from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from agelens.schemas import BatchItem, BatchResponse, ErrorBody, ErrorResponse, EstimateResponse
from service.dependencies import check_api_key, concurrency_slot, get_estimator, run_in_turn
from service.errors import ApiError, image_error
from service.estimator import Estimator
from service.responses import ModelResponse

router = APIRouter(tags=["estimate"], dependencies=[Depends(check_api_key)])

ERRORS = {
    400: {"model": ErrorResponse, "description": "Malformed multipart body"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "Upload or image too large"},
    415: {"model": ErrorResponse, "description": "Unsupported image format"},
    422: {"model": ErrorResponse, "description": "Not a valid image, or a wrong field"},
    503: {"model": ErrorResponse, "description": "Over capacity or still loading (see Retry-After)"},
}
Distribution = Annotated[bool, Query(description="Include each face's full age distribution")]
UsableOnly = Annotated[
    bool,
    Query(
        description="Leave out faces whose quality is not usable; their number is in faces_unusable_omitted"
    ),
]


def _observe(request: Request, result: EstimateResponse) -> None:
    m = request.app.state.metrics
    m.faces.observe(len(result.faces))
    for face in result.faces:
        for reason in face.quality.reasons:
            m.unusable.labels(reason).inc()
    t = result.timings
    for stage, ms in (
        ("decode", t.decode_ms),
        ("detect", t.detect_ms),
        ("align", t.align_ms),
        ("quality", t.quality_ms),
        ("infer", t.infer_ms),
    ):
        m.stage.labels(stage).observe(ms / 1e3)


@router.post(
    "/estimate",
    response_model=EstimateResponse,
    responses=ERRORS,
    summary="Estimate the age of every face in one image",
)
async def estimate(
    request: Request,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, GIF, BMP or TIFF")],
    estimator: Annotated[Estimator, Depends(get_estimator)],
    _slot: Annotated[None, Depends(concurrency_slot)],
    distribution: Distribution = True,
    usable_only: UsableOnly = False,
) -> ModelResponse:
    data = await image.read()
    try:
        result = await run_in_turn(request, estimator.estimate, data, distribution, usable_only)
    except ValueError as exc:
        raise image_error(exc) from exc
    _observe(request, result)
    return ModelResponse(result)


@router.post(
    "/estimate/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Estimate ages in several images; per-image errors do not fail the batch",
)
async def estimate_batch(
    request: Request,
    images: Annotated[list[UploadFile], File(description="Several images, in order")],
    estimator: Annotated[Estimator, Depends(get_estimator)],
    _slot: Annotated[None, Depends(concurrency_slot)],
    distribution: Distribution = True,
    usable_only: UsableOnly = False,
) -> ModelResponse:
    limit = request.app.state.settings.max_batch_images
    if len(images) > limit:
        raise ApiError(413, "too_many_images", f"{len(images)} images sent; the limit is {limit} per batch")
    started = time.perf_counter()
    blobs = [await f.read() for f in images]
    results = await run_in_turn(request, estimator.estimate_many, blobs, distribution, usable_only)
    items = []
    for i, (f, res) in enumerate(zip(images, results, strict=True)):
        if isinstance(res, EstimateResponse):
            _observe(request, res)
            items.append(BatchItem(index=i, filename=f.filename, result=res))
        else:
            err = image_error(res)
            items.append(
                BatchItem(index=i, filename=f.filename, error=ErrorBody(code=err.code, message=err.message))
            )
    return ModelResponse(
        BatchResponse(
            model=estimator.info, items=items, total_ms=round((time.perf_counter() - started) * 1e3, 2)
        )
    )

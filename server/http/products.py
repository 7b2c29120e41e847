"""`/products`: create a product (hosts and admins), read one (anyone), set its stock (its
seller, or an admin)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from schemas.http import ProductIn, StockIn, product_to_wire
from server.domain.products import ProductTrade
from server.http.deps import (
    container_of,
    identity_of,
    json_body,
    location_of,
    require_identity,
)


async def create_product(request: Request) -> JSONResponse:
    who = require_identity(request)
    body = await json_body(request, ProductIn)
    product = await container_of(request).room_service.create_product(
        who,
        title=body.title,
        price=body.price.to_money(),
        stock=body.stock,
        images=[str(url) for url in body.images],
        trade=ProductTrade(
            description=body.description,
            sku=body.sku,
            origin_country=body.origin_country,
            hs_code=body.hs_code,
            weight_grams=body.weight_grams,
            other_prices=tuple(body.other_money()),
        ),
    )
    headers = {"Location": location_of(request, "product", product_id=product.id)}
    return JSONResponse(product_to_wire(product), status_code=201, headers=headers)


async def get_product(request: Request) -> JSONResponse:
    identity_of(request)  # open to anyone, but a token that is sent must be good
    product_id = request.path_params["product_id"]
    product = await container_of(request).room_service.get_product(product_id)
    return JSONResponse(product_to_wire(product))


async def set_stock(request: Request) -> JSONResponse:
    who = require_identity(request)
    body = await json_body(request, StockIn)
    product = await container_of(request).offer_service.set_product_stock(
        who, request.path_params["product_id"], body.stock
    )
    return JSONResponse(product_to_wire(product))


async def product_resource(request: Request) -> JSONResponse:
    # One route for both methods, so a wrong method hears all of GET, HEAD and PATCH in `Allow`.
    if request.method == "PATCH":
        return await set_stock(request)
    return await get_product(request)


def routes() -> list[BaseRoute]:
    return [
        Route("/products", create_product, methods=["POST"], name="create_product"),
        Route("/products/{product_id}", product_resource, methods=["GET", "PATCH"], name="product"),
    ]

"""Each path is served by one route. Starlette answers a method a path does not take from the
first route whose path matches, so a path split over two routes would name only that route's
methods in `Allow` (RFC 9110 asks for all of them)."""

from __future__ import annotations

from collections import Counter

from starlette.routing import Route

from server.http import commerce, ops, products, rooms


def test_no_path_is_split_over_two_routes() -> None:
    api = [*commerce.routes(), *products.routes(), *rooms.routes(), *ops.api_routes()]
    for group in (api, ops.routes()):
        paths = Counter(route.path for route in group if isinstance(route, Route))
        assert [path for path, routes in paths.items() if routes > 1] == []

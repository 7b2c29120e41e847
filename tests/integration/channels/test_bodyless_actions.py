"""Actions on what their path names (a cancel, an offer's stop, a room's start and end) take
no body: sent one anyway, they refuse it as any bad body is refused, and change nothing,
rather than act on a request whose fields they would not read."""

from __future__ import annotations

import httpx

from server.domain.identity import Role
from tests.integration.channels.live import Live, token
from tests.integration.channels.test_flash_offers import claim, launch

# What a client may send an action by mistake (Content-Type, body), and the answer it gets.
BAD_BODIES = [
    ("text/plain", b"please", 415),
    ("application/json", b"{nope", 400),
    ("application/json", b'{"reason": "changed my mind"}', 422),  # a field it would not read
]


async def _post(
    live: Live, path: str, who: str, role: Role, body: bytes = b"", content_type: str = ""
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token(who, role)}"}
    if content_type:
        headers["Content-Type"] = content_type
    return await live.http.post(f"/api/v1{path}", content=body, headers=headers)


async def test_actions_refuse_a_body_and_change_nothing(live: Live) -> None:
    offer = await launch(live, quantity=3, limit=1)
    order = (await claim(live, offer["id"], "leo", "k1")).json()
    actions = [
        (f"/orders/{order['id']}/cancel", "leo", Role.SHOPPER),
        (f"/offers/{offer['id']}/stop", "host-1", Role.HOST),
        (f"/rooms/{live.room_id}/start", "host-1", Role.HOST),  # live already: answers the room
        (f"/rooms/{live.room_id}/end", "host-1", Role.HOST),
    ]
    for path, who, role in actions:
        for content_type, body, status in BAD_BODIES:
            refused = await _post(live, path, who, role, body, content_type)
            assert refused.status_code == status, (path, body, refused.text)
    assert (await live.host("GET", f"/orders/{order['id']}")).json()["status"] == "pending_payment"
    assert (await live.host("GET", f"/offers/{offer['id']}")).json()["end_reason"] is None
    assert (await live.host("GET", f"/rooms/{live.room_id}")).json()["status"] == "live"
    # None, or `{}`, as many clients send for a POST: carried out.
    for path, who, role in actions:
        done = await _post(live, path, who, role, b"{}", "application/json")
        assert done.status_code == 200, (path, done.text)
        again = await _post(live, path, who, role)
        assert again.status_code == 200, (path, again.text)

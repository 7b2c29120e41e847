"""Room frames through a real uvicorn: straight to uncompressed sockets, the ASGI way to others.

If the uvicorn we ship stops offering what `channels/direct_send.py` needs, the first test
fails instead of every viewer silently falling back to the slower path.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import websockets

from channels import connection, direct_send
from channels.direct_send import DirectSocket
from tests.integration.channels.live import Live, recv, recv_type


async def test_frames_reach_plain_compressed_and_paused_sockets_whole_and_in_order(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy, not a stand-in: the real function writes; the test only counts what it did.
    outcomes: dict[bool, list[bool]] = defaultdict(list)
    sockets: dict[bool, DirectSocket] = {}
    real_send_now = direct_send.send_now

    def counting_send_now(socket: DirectSocket, text: str) -> bool:
        written = real_send_now(socket, text)
        outcomes[bool(socket.conn.extensions)].append(written)
        sockets[bool(socket.conn.extensions)] = socket
        return written

    monkeypatch.setattr(connection, "send_now", counting_send_now)
    async with (
        websockets.connect(live.url("leo"), compression=None) as plain,
        websockets.connect(live.url("mia")) as compressed,
    ):
        await recv(plain)
        await recv(compressed)
        texts = [f"message {n} " + "ü" * (n * 60) for n in range(5)]  # within the chat burst
        for n, text in enumerate(texts):
            await plain.send(json.dumps({"type": "chat.send", "text": text, "client_id": f"c{n}"}))
        await plain.send(json.dumps({"type": "ping", "ref": "p1"}))  # a short private reply
        for ws, expected_pongs in ((plain, ["p1"]), (compressed, [])):
            chats: list[tuple[str, str]] = []
            pongs: list[str] = []
            while len(chats) < len(texts) or len(pongs) < len(expected_pongs):
                frame = await recv(ws)
                if frame["type"] == "chat.message":
                    chats.append((frame["client_id"], frame["text"]))
                elif frame["type"] == "pong":
                    pongs.append(frame["ref"])
            assert chats == [(f"c{n}", text.strip()) for n, text in enumerate(texts)]
            assert pongs == expected_pongs

        # Flow control, as when the client stops reading: the transport pauses the protocol.
        # A frame then waits in the queue, and goes out once the transport resumes it.
        server_side = sockets[False]
        server_side.pause_writing()
        written_before = len(outcomes[False])
        await plain.send(json.dumps({"type": "ping", "ref": "while-paused"}))
        # Frames written before the pause (a viewers count, say) may still arrive; the pong not.
        with pytest.raises(TimeoutError):
            await recv_type(plain, "pong", within=0.3)
        while_paused = outcomes[False][written_before:]
        assert while_paused, "the ping's pong never came this way"
        assert not any(while_paused), "a paused socket was written to"
        server_side.resume_writing()
        assert (await recv_type(plain, "pong"))["ref"] == "while-paused"
    assert True in outcomes[False], "no frame went straight to the uncompressed socket"
    assert outcomes[True], "the compressed socket's frames never came this way"
    assert not any(outcomes[True]), "a deflate socket got a raw frame"

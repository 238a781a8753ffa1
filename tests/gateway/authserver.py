"""A forward-auth server that behaves like the Authentik outpost's Envoy endpoint.

Session cookie ``authentik_session=valid:<user>`` -> 200 with X-authentik-* identity
headers. No valid session -> 302 to the login page, with a Set-Cookie. ``mode``
switches to failure behaviours: "500", "hang".
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import h11

from tests.gateway.backends import Backend


class AuthServer(Backend):
    def __init__(self) -> None:
        self.mode = "normal"
        self.checks: list[dict] = []
        super().__init__("auth")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = None
                body = b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(ev, h11.Request):
                        req = ev
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
                if req is None:
                    return
                headers = {n.decode(): v.decode() for n, v in req.headers}
                self.checks.append({"method": req.method.decode(), "target": req.target.decode(), "headers": headers, "body": body})
                if self.mode == "hang":
                    await asyncio.sleep(3600)
                if self.mode == "500":
                    resp, payload = h11.Response(status_code=500, headers=[("content-length", "5")]), b"error"
                else:
                    cookies = dict(
                        c.strip().split("=", 1) for c in headers.get("cookie", "").split(";") if "=" in c
                    )
                    session = cookies.get("authentik_session", "")
                    if session.startswith("valid:"):
                        user = session[6:]
                        resp = h11.Response(
                            status_code=200,
                            headers=[
                                ("content-length", "0"),
                                ("x-authentik-username", user),
                                ("x-authentik-groups", "users|admins" if user == "admin" else "users"),
                                ("x-authentik-email", f"{user}@home.test"),
                                ("x-authentik-uid", f"uid-{user}"),
                                ("x-unrelated", "not for the backend"),
                            ],
                        )
                        payload = b""
                    else:
                        original = headers.get("x-forwarded-proto", "http") + "://" + headers.get("host", "") + req.target.decode().split("/envoy", 1)[-1]
                        payload = b"redirecting to login"
                        resp = h11.Response(
                            status_code=302,
                            headers=[
                                ("location", "https://auth.home.test/outpost.goauthentik.io/start?rd=" + quote(original, safe="")),
                                ("set-cookie", "authentik_proxy_1234=state; Path=/; HttpOnly"),
                                ("content-length", str(len(payload))),
                            ],
                        )
                writer.write(conn.send(resp) + conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

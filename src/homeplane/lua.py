"""Lua extensions (EnvoyExtensionPolicy ``lua``), run the way Envoy's Lua HTTP filter runs them.

A script defines ``envoy_on_request(request_handle)`` and/or
``envoy_on_response(response_handle)``. They run on LuaJIT (Envoy's runtime, through lupa),
each call as a coroutine, against the part of Envoy's stream handle API that works without
buffering bodies or calling out: ``headers()`` (get, getAtIndex, getNumValues, add, replace,
remove, iteration with ``pairs``), ``respond(headers, body)`` (ends the script and answers the
client), ``log*``, ``streamInfo()`` (protocol, addresses, SNI, dynamic metadata),
``connection():ssl()``, ``filterContext()`` and ``metadata()``. Calls that need a body or a
network round trip (``body``, ``bodyChunks``, ``trailers``, ``httpCall``) raise a script error.

As in Envoy, a script error is logged and the request goes on unchanged by the rest of the
script. Scripts see no Python: lupa's bridge objects are not reachable from Lua, and the
callbacks it calls take and return plain strings and tables.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("homeplane.lua")

try:
    from lupa import luajit21 as _lupa
except ImportError:  # pragma: no cover - lupa ships LuaJIT wheels for the platforms we run on
    from lupa import lua51 as _lupa  # type: ignore[no-redef]

# The stream-handle API, in Lua, over a few Python callbacks (``py``). ``pairs`` honours
# __pairs, as in Envoy's LuaJIT (built with 5.2 compatibility).
_PRELUDE = r"""
local py = ...
local raw_pairs = pairs
pairs = function(t)
  local mt = getmetatable(t)
  if mt and mt.__pairs then return mt.__pairs(t) end
  return raw_pairs(t)
end
unpack = unpack or table.unpack

local Headers = {}
Headers.__index = Headers
function Headers:get(k) return py.get(self.which, k) end
function Headers:getAtIndex(k, i) return py.get_at(self.which, k, i) end
function Headers:getNumValues(k) return py.count(self.which, k) end
function Headers:add(k, v) py.add(self.which, k, v) end
function Headers:replace(k, v) py.replace(self.which, k, v) end
function Headers:remove(k) py.remove(self.which, k) end
function Headers:setHttp1ReasonPhrase(p) end
Headers.__pairs = function(self)
  local items = py.items(self.which)
  local i = 0
  return function()
    i = i + 1
    local it = items[i]
    if it then return it[1], it[2] end
  end
end

local Metadata = {}
Metadata.__index = Metadata
function Metadata:get(k) return nil end
Metadata.__pairs = function(self) return function() return nil end end

local Dynamic = {}
Dynamic.__index = Dynamic
function Dynamic:get(ns) return self.data[ns] end
function Dynamic:set(ns, k, v)
  self.data[ns] = self.data[ns] or {}
  self.data[ns][k] = v
end
Dynamic.__pairs = function(self) return raw_pairs(self.data) end

local StreamInfo = {}
StreamInfo.__index = StreamInfo
function StreamInfo:protocol() return py.info("protocol") end
function StreamInfo:downstreamDirectRemoteAddress() return py.info("remote") end
function StreamInfo:downstreamRemoteAddress() return py.info("remote") end
function StreamInfo:downstreamLocalAddress() return py.info("local") end
function StreamInfo:requestedServerName() return py.info("sni") end
function StreamInfo:dynamicMetadata() return self.dynamic end

local Handle = {}
Handle.__index = Handle
function Handle:headers() return self.h end
function Handle:respond(headers, body)
  py.respond(headers, body or "")
  coroutine.yield()  -- never resumed: the script ends here, as in Envoy
end
function Handle:logTrace(m) py.log(0, m) end
function Handle:logDebug(m) py.log(0, m) end
function Handle:logInfo(m) py.log(1, m) end
function Handle:logWarn(m) py.log(2, m) end
function Handle:logErr(m) py.log(3, m) end
function Handle:logCritical(m) py.log(3, m) end
function Handle:streamInfo() return self.si end
function Handle:connection()
  return {ssl = function() if py.info("tls") then return {} end return nil end}
end
function Handle:filterContext() return self.ctx end
function Handle:metadata() return setmetatable({}, Metadata) end
local function unsupported(name)
  return function() error(name .. "() is not supported by homeplane (no body buffering or callouts)", 2) end
end
Handle.body = unsupported("body")
Handle.bodyChunks = unsupported("bodyChunks")
Handle.trailers = unsupported("trailers")
Handle.httpCall = unsupported("httpCall")
Handle.clearRouteCache = function() end

-- run(fn, which, ctx): the hook as a coroutine; returns an error message or nil
return function(fn, which, ctx, dynamic)
  local h = setmetatable({which = which}, Headers)
  local si = setmetatable({dynamic = setmetatable({data = dynamic}, Dynamic)}, StreamInfo)
  local handle = setmetatable({h = h, si = si, ctx = ctx}, Handle)
  local co = coroutine.create(fn)
  local ok, err = coroutine.resume(co, handle)
  if not ok then return tostring(err) end
  return nil
end
"""


class LuaScriptError(ValueError):
    pass


@dataclass
class Call:
    """One request's state while its hooks run (the callbacks read and change it)."""

    request: list[tuple[bytes, bytes]]  # lower-case names, as on the wire
    response: list[tuple[bytes, bytes]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    reply: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None  # set by respond()
    dynamic: Any = None


class LuaScript:
    """One compiled script in its own Lua state."""

    def __init__(self, source: str, name: str, filter_context: dict | None = None):
        self.name = name
        self.rt = _lupa.LuaRuntime(
            register_eval=False, register_builtins=False, unpack_returned_tuples=True, attribute_filter=_no_attributes,
        )
        self.call: Call | None = None
        g = self.rt.globals()
        callbacks = self.rt.table_from({
            "get": self._get, "get_at": self._get_at, "count": self._count, "add": self._add, "replace": self._replace,
            "remove": self._remove, "items": self._items, "respond": self._respond, "log": self._log, "info": self._info,
        })
        g.python = None  # nothing of the bridge stays reachable from scripts
        self.runner = self.rt.execute(_PRELUDE, callbacks)
        try:
            self.rt.execute(source)
        except _lupa.LuaSyntaxError as e:
            raise LuaScriptError(f"syntax error: {e}") from None
        except _lupa.LuaError as e:
            raise LuaScriptError(f"error while loading: {e}") from None
        self.on_request = g.envoy_on_request
        self.on_response = g.envoy_on_response
        if self.on_request is None and self.on_response is None:
            raise LuaScriptError("defines neither envoy_on_request nor envoy_on_response")
        self.ctx = self.rt.table_from(_to_lua(self.rt, filter_context or {}))

    # --- hooks -------------------------------------------------------------------------

    def request(self, call: Call) -> None:
        if self.on_request is not None:
            self._run(self.on_request, "request", call)

    def response(self, call: Call) -> None:
        if self.on_response is not None:
            self._run(self.on_response, "response", call)

    def _run(self, fn: Any, which: str, call: Call) -> None:
        self.call = call
        if call.dynamic is None:
            call.dynamic = self.rt.table()
        try:
            err = self.runner(fn, which, self.ctx, call.dynamic)
        except _lupa.LuaError as e:  # an error the coroutine wrapper could not catch
            err = str(e)
        finally:
            self.call = None
        if err:
            log.error("Lua script %s: envoy_on_%s failed: %s", self.name, which, err)

    # --- callbacks (Lua -> Python) ---------------------------------------------------------

    def _list(self, which: str) -> list[tuple[bytes, bytes]]:
        assert self.call is not None
        return self.call.request if which == "request" else self.call.response

    def _get(self, which: str, key: str) -> str | None:
        k = _key(key)
        values = [v for n, v in self._list(which) if n == k]
        return ",".join(v.decode("latin-1") for v in values) if values else None

    def _get_at(self, which: str, key: str, index: int) -> str | None:
        k = _key(key)
        values = [v for n, v in self._list(which) if n == k]
        i = int(index)
        return values[i].decode("latin-1") if 0 <= i < len(values) else None

    def _count(self, which: str, key: str) -> int:
        k = _key(key)
        return sum(1 for n, _ in self._list(which) if n == k)

    def _add(self, which: str, key: str, value: Any) -> None:
        self._list(which).append((_key(key), _value(value)))

    def _replace(self, which: str, key: str, value: Any) -> None:
        lst = self._list(which)
        k = _key(key)
        lst[:] = [h for h in lst if h[0] != k]
        lst.append((k, _value(value)))

    def _remove(self, which: str, key: str) -> None:
        lst = self._list(which)
        k = _key(key)
        lst[:] = [h for h in lst if h[0] != k]

    def _items(self, which: str) -> Any:
        return self.rt.table_from([self.rt.table_from([n.decode("latin-1"), v.decode("latin-1")]) for n, v in self._list(which)])

    def _respond(self, headers: Any, body: Any) -> None:
        assert self.call is not None
        out: list[tuple[bytes, bytes]] = []
        status = 200
        if headers is not None:
            for k, v in headers.items():
                if k == ":status":
                    try:
                        status = int(v)
                    except (TypeError, ValueError):
                        status = 200
                else:
                    out.append((_key(str(k)), _value(v)))
        self.call.reply = (status, out, _value(body))

    def _log(self, level: int, message: Any) -> None:
        log.log((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[int(level)], "Lua %s: %s", self.name, message)

    def _info(self, what: str) -> Any:
        assert self.call is not None
        return self.call.info.get(what)


def _no_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("not accessible from Lua")


def _key(k: Any) -> bytes:
    return str(k).lower().encode("latin-1", "replace")


def _value(v: Any) -> bytes:
    if v is None:
        return b""
    if isinstance(v, bytes):
        return v
    return str(v).encode("latin-1", "replace")


def _to_lua(rt: Any, value: Any) -> Any:
    """JSON filterContext -> nested Lua tables."""
    if isinstance(value, dict):
        return rt.table_from({k: _to_lua(rt, v) for k, v in value.items()})
    if isinstance(value, list):
        return rt.table_from([_to_lua(rt, v) for v in value])
    return value


_compiled: dict[tuple[str, str, str], LuaScript] = {}


def script(source: str, name: str, filter_context: dict | None = None) -> LuaScript:
    """A compiled script, shared between Snapshots while its source is unchanged."""
    key = (source, name, json.dumps(filter_context, sort_keys=True))
    s = _compiled.get(key)
    if s is None:
        s = _compiled[key] = LuaScript(source, name, filter_context)
    return s


def check(source: str) -> str | None:
    """Why a script cannot run (syntax, load error, no hook), or None."""
    try:
        LuaScript(source, "check")
    except LuaScriptError as e:
        return str(e)
    return None

"""Access log lines in Envoy's formats: command operators, response flags, default formats.

A format is compiled once into a list of literal strings and field getters, so writing a line
is a join, not a parse. The defaults are Envoy Gateway's: its JSON dictionary (what dashboards
and log queries built for Envoy Gateway read), or Envoy's default text line with
``--access-log-format text``. An ``EnvoyProxy``'s ``spec.telemetry.accessLog`` replaces them for
its Gateways: ``disable``, and ``settings[].format`` (``Text`` with ``text``, ``JSON`` with
``json``) written to ``File`` sinks. ``/dev/stdout`` is the process's log stream; other files
only inside ``--access-log-dir`` (in Envoy Gateway the path is inside the proxy's container; here
it would be anywhere homeplane may write, with what clients send), opened without following
links, non-blocking, regular files only. An operator homeplane does not know prints ``-``.

Response flags carry Envoy's meanings: NR no route, UH no healthy upstream, UF upstream
connection failure, UO upstream overflow (circuit breaker), URX retry limit exceeded, UT
upstream request timeout, UC upstream connection termination, DC downstream connection
termination, UAEX denied by the external authorization service, DPE downstream protocol error,
OM overload manager, NC no cluster.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

# Envoy's default format string (without its trailing newline; each record is one line)
DEFAULT_TEXT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% '
    '%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" '
    '"%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"'
)

# Envoy Gateway's default JSON access log, plus the Gateway that took the request
DEFAULT_JSON: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "x-envoy-origin-path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "x-envoy-upstream-service-time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x-forwarded-for": "%REQ(X-FORWARDED-FOR)%",
    "user-agent": "%REQ(USER-AGENT)%",
    "x-request-id": "%REQ(X-REQUEST-ID)%",
    ":authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "route_name": "%ROUTE_NAME%",
    "gateway": "%GATEWAY%",
}


def request_headers(head: bytes) -> dict[str, str]:
    """The fields of an HTTP/1.1 request head (the one sent upstream, after the proxy's own
    changes, which is what Envoy's ``%REQ(...)%`` reads), the first value of each name."""
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out.setdefault(name.decode("latin-1").strip().lower(), value.strip().decode("latin-1"))
    return out


def first_values(fields: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, v in fields:
        out.setdefault(n.decode("latin-1"), v.decode("latin-1"))
    return out


@dataclass(slots=True)
class Record:
    """What one request (or TCP/UDP stream) leaves for the log."""

    start: float  # wall clock, seconds
    duration: float  # seconds
    gateway: str = ""
    route: str | None = None
    method: str = ""
    path: str = ""
    authority: str = ""
    protocol: str = ""
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    client: str = ""
    local: str = ""
    request_id: str | None = None
    user_agent: str | None = None
    xff: str | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_time: float | None = None  # seconds from the request sent upstream to its response head
    sni: str | None = None
    error: str | None = None
    attempts: int = 0
    headers: Mapping[str, str] | None = None  # other request headers, where the lane keeps them
    flags: str = field(default="")

    def __post_init__(self) -> None:
        if not self.flags:
            self.flags = response_flags(self.error, self.status, self.route, self.attempts)


# error text of the data planes (both lanes) -> Envoy response flag
_FLAG_RULES: tuple[tuple[str, str], ...] = (
    ("no healthy upstream", "UH"),
    ("circuit breaker", "UO"),
    ("overload", "OM"),
    ("reset", "UC"),
    ("upstream connect error", "UF"),
    ("connect timeout", "UF"),
    ("upstream request timeout", "UT"),
    ("request timeout", "UT"),
    ("client closed", "DC"),
    ("denied by ext auth", "UAEX"),
    ("ext auth", "UAEX"),
    ("no cluster", "NC"),
    ("invalid", "DPE"),
    ("missing host", "DPE"),
    ("more than one host", "DPE"),
)


def response_flags(error: str | None, status: int, route: str | None, attempts: int = 0) -> str:
    """Envoy's ``%RESPONSE_FLAGS%`` for what happened: ``-`` when nothing went wrong."""
    if not error:
        return "NR" if route is None and status == 404 else "-"
    low = error.lower()
    flags = [flag for needle, flag in _FLAG_RULES if needle in low][:1]
    if flags and flags[0] in ("UF", "UC", "UT") and attempts > 1:
        flags.append("URX")
    return ",".join(flags) or "-"


_HOSTNAME = socket.gethostname()
# Envoy's %RESPONSE_CODE_DETAILS% for each flag
_DETAILS = {"NR": "route_not_found", "UH": "no_healthy_upstream", "UF": "upstream_reset_before_response_started{connection_failure}",
            "UC": "upstream_reset_before_response_started{connection_termination}", "UT": "upstream_response_timeout",
            "UO": "upstream_reset_before_response_started{overflow}", "DC": "downstream_remote_disconnect",
            "UAEX": "ext_authz_denied", "DPE": "http1.codec_error", "OM": "overload_manager", "NC": "cluster_not_found"}
MAX_FORMAT = 16 * 1024  # a longer format is refused (it would be compiled on every reload)


def _details(r: Record) -> str:
    first = r.flags.split(",")[0]
    if first in _DETAILS:
        return _DETAILS[first]
    if r.error:
        return r.error.replace(" ", "_")
    return "via_upstream" if r.upstream_host else "direct_response"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _req(name: str) -> Callable[[Record], Any]:
    """``%REQ(X?Y)%``: a request header (pseudo-headers for method, path, authority)."""
    def one(h: str) -> Callable[[Record], Any]:
        h = h.strip().lower()
        if h == ":method":
            return lambda r: r.method or None
        if h == ":path":
            return lambda r: r.path or None
        if h in (":authority", "host"):
            return lambda r: r.authority or None
        if h == "user-agent":
            return lambda r: r.user_agent
        if h == "x-forwarded-for":
            return lambda r: r.xff
        if h == "x-request-id":
            return lambda r: r.request_id
        def header(r: Record) -> Any:
            return (r.headers or {}).get(h)
        header.generic = True  # type: ignore[attr-defined]
        return header
    first, _, alt = name.partition("?")
    a, b = one(first), (one(alt) if alt else None)
    if b is None:
        return a
    def either(r: Record) -> Any:
        return a(r) or b(r)
    either.generic = getattr(a, "generic", False) or getattr(b, "generic", False)  # type: ignore[attr-defined]
    return either


def _resp(name: str) -> Callable[[Record], Any]:
    if name.strip().lower() == "x-envoy-upstream-service-time":
        return lambda r: None if r.upstream_time is None else int(r.upstream_time * 1000)
    return lambda r: None


_OPERATORS: dict[str, Callable[[Record], Any]] = {
    "START_TIME": lambda r: _iso(r.start),
    "PROTOCOL": lambda r: r.protocol or None,
    "RESPONSE_CODE": lambda r: r.status,
    "RESPONSE_FLAGS": lambda r: r.flags,
    "RESPONSE_CODE_DETAILS": lambda r: _details(r),
    "CONNECTION_TERMINATION_DETAILS": lambda r: None,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda r: None,
    "BYTES_RECEIVED": lambda r: r.bytes_in,
    "BYTES_SENT": lambda r: r.bytes_out,
    "DURATION": lambda r: int(r.duration * 1000),
    "UPSTREAM_HOST": lambda r: r.upstream_host,
    "UPSTREAM_CLUSTER": lambda r: r.upstream_cluster,
    "UPSTREAM_LOCAL_ADDRESS": lambda r: None,
    "DOWNSTREAM_LOCAL_ADDRESS": lambda r: r.local or None,
    "DOWNSTREAM_REMOTE_ADDRESS": lambda r: r.client or None,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda r: r.client or None,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda r: r.client or None,
    "REQUESTED_SERVER_NAME": lambda r: r.sni,
    "ROUTE_NAME": lambda r: r.route,
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda r: r.attempts,
    "HOSTNAME": lambda r: _HOSTNAME,
    "REQUEST_DURATION": lambda r: int(r.duration * 1000),
    "RESPONSE_DURATION": lambda r: int(r.duration * 1000),
    "GATEWAY": lambda r: r.gateway or None,
}

_OPERATOR = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?(?::(\d+))?%")


class FormatError(ValueError):
    pass


def _start_time(fmt: str) -> Callable[[Record], Any]:
    """``%START_TIME(fmt)%``: strftime, with Envoy's ``%3f``…``%9f`` (fractions) and ``%s``."""
    def render(r: Record) -> str:
        frac = f"{r.start % 1:.9f}"[2:]
        text = re.sub(r"%([1-9])f", lambda m: frac[:int(m.group(1))], fmt).replace("%s", str(int(r.start)))
        return time.strftime(text, time.gmtime(r.start))
    return render


def _without_query(name: str) -> Callable[[Record], Any]:
    get = _req(name)

    def render(r: Record) -> Any:
        v = get(r)
        return v.split("?", 1)[0] if isinstance(v, str) else v
    render.generic = getattr(get, "generic", False)  # type: ignore[attr-defined]
    return render


def _getter(op: str, arg: str | None, limit: str | None, problems: list[str] | None = None) -> Callable[[Record], Any]:
    if op == "REQ":
        get = _req(arg or "")
    elif op == "REQ_WITHOUT_QUERY":
        get = _without_query(arg or "")
    elif op == "RESP":
        if (arg or "").strip().lower() != "x-envoy-upstream-service-time" and problems is not None:
            problems.append(f"%RESP({arg})% prints - (only X-ENVOY-UPSTREAM-SERVICE-TIME is kept)")
        get = _resp(arg or "")
    elif op == "START_TIME" and arg:
        get = _start_time(arg)
    elif op in _OPERATORS:
        get = _OPERATORS[op]
    elif problems is not None:  # Envoy would refuse the configuration; here the rest still logs
        problems.append(f"command operator %{op}% is not supported; it prints -")
        return lambda r: None
    else:
        raise FormatError(f"command operator %{op}% is not supported")
    if limit:
        n = int(limit)
        inner = get

        def get(r: Record) -> Any:
            v = inner(r)
            return None if v is None else str(v)[:n]
        get.generic = getattr(inner, "generic", False)  # type: ignore[attr-defined]
    return get


def uses_headers(render: Callable[[Record], str]) -> bool:
    """Whether a compiled format reads request headers beyond those every lane keeps (the C
    lane then hands over its request head)."""
    return getattr(render, "generic", False)


def compile_text(template: str, problems: list[str] | None = None) -> Callable[[Record], str]:
    """A format string: literals and ``%OPERATOR%``; a missing value is ``-`` as in Envoy.
    With ``problems``, an unknown operator is noted there and prints ``-``; without, it raises."""
    parts: list[str | Callable[[Record], Any]] = []
    pos = 0
    for m in _OPERATOR.finditer(template):
        if m.start() > pos:
            parts.append(template[pos:m.start()])
        parts.append(_getter(m.group(1), m.group(2), m.group(3), problems))
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    frozen = tuple(parts)
    generic = any(getattr(p, "generic", False) for p in frozen if not isinstance(p, str))

    def render(r: Record) -> str:
        out = []
        for p in frozen:
            if isinstance(p, str):
                out.append(p)
            else:
                v = p(r)
                out.append("-" if v is None or v == "" else str(v))
        return "".join(out).rstrip("\n")
    render.generic = generic  # type: ignore[attr-defined]
    return render


def _json_value(value: Any, problems: list[str] | None) -> Callable[[Record], Any]:
    """One value of a format dictionary: nested maps stay maps, literals keep their type, one
    operator keeps its value's type (null when missing), other strings are text templates."""
    if isinstance(value, Mapping):
        parts = [(str(k), _json_value(v, problems)) for k, v in value.items()]

        def nested(r: Record) -> Any:
            return {k: g(r) for k, g in parts}
        nested.generic = any(getattr(g, "generic", False) for _, g in parts)  # type: ignore[attr-defined]
        return nested
    if not isinstance(value, str):
        return lambda r: value
    m = _OPERATOR.fullmatch(value)
    if m:
        return _getter(m.group(1), m.group(2), m.group(3), problems)
    return compile_text(value, problems) if "%" in value else (lambda r: value)


def compile_json(fields: Mapping[str, Any], problems: list[str] | None = None) -> Callable[[Record], str]:
    """A format dictionary (Envoy's ``json_format``)."""
    compiled = [(str(k), _json_value(v, problems)) for k, v in fields.items()]

    def render(r: Record) -> str:
        return json.dumps({k: g(r) for k, g in compiled}, separators=(",", ":"), default=str)
    render.generic = any(getattr(g, "generic", False) for _, g in compiled)  # type: ignore[attr-defined]
    return render


@dataclass(frozen=True)
class LogSetting:
    render: Callable[[Record], str]
    path: str | None = None  # None: the process's access log stream (stdout)


def settings_from_envoyproxy(telemetry: Mapping[str, Any] | None) -> tuple[list[LogSetting], list[str]] | None:
    """An EnvoyProxy's ``spec.telemetry.accessLog``: (settings, problems), ``([], [])`` when
    disabled, None when it says nothing (the default applies)."""
    access = (telemetry or {}).get("accessLog") if isinstance(telemetry, Mapping) else None
    if not isinstance(access, Mapping):
        return None
    if access.get("disable") is True:
        return [], []
    out: list[LogSetting] = []
    problems: list[str] = []
    settings = access.get("settings")
    if settings is not None and not isinstance(settings, list):
        problems.append("accessLog.settings is not a list; the default access log applies")
        settings = []
    for i, s in enumerate(settings or []):
        if not isinstance(s, Mapping):
            problems.append(f"accessLog.settings[{i}] is not an object; ignored")
            continue
        where = f"accessLog.settings[{i}]"
        fmt = s.get("format") if isinstance(s.get("format"), Mapping) else {}
        found: list[str] = []
        if fmt.get("type") == "JSON" and isinstance(fmt.get("json"), Mapping):
            size = len(json.dumps(fmt["json"], default=str))
            render = compile_json(fmt["json"], found) if size <= MAX_FORMAT else None
        elif fmt.get("type") == "Text" and fmt.get("text"):
            text = str(fmt["text"])
            render = compile_text(text, found) if len(text) <= MAX_FORMAT else None
        else:
            render = compile_json(DEFAULT_JSON)
        if render is None:
            problems.append(f"{where}.format is longer than {MAX_FORMAT} characters; the default format is used")
            render = compile_json(DEFAULT_JSON)
        problems += [f"{where}.format: {p}" for p in dict.fromkeys(found)]
        if s.get("matches"):
            problems.append(f"{where}.matches (CEL) is not evaluated: every request is logged")
        sinks = [k for k in s.get("sinks") or [] if isinstance(k, Mapping)]
        files = []
        for k in sinks:
            if k.get("type", "File") != "File":
                problems.append(f"{where}: sink type {k.get('type')} is not supported (File is); written to stdout")
                files.append("/dev/stdout")
            else:
                files.append(str((k.get("file") or {}).get("path") or "/dev/stdout"))
        for path in dict.fromkeys(files or ["/dev/stdout"]):
            out.append(LogSetting(render, None if path in ("/dev/stdout", "/dev/stderr") else path))
    return out, problems


class AccessLogs:
    """Where records go: per Gateway, its EnvoyProxy's settings, else the default format on the
    ``homeplane.access`` logger (stdout when run from the command line). File sinks are opened
    once, appended to line by line; a sink that cannot be written is reported once and dropped."""

    def __init__(self, default_format: str = "json", log_dir: str | None = None):
        render = compile_text(DEFAULT_TEXT) if default_format == "text" else compile_json(DEFAULT_JSON)
        self.default = [LogSetting(render)]
        self.log_dir = os.path.realpath(log_dir) if log_dir else None
        self.by_gateway: dict[str, list[LogSetting]] = {}
        self.header_hungry: set[str] = set()  # Gateways whose formats read other request headers
        self._files: dict[str, Any] = {}
        self._logger = logging.getLogger("homeplane.access")

    def configure(self, gateways: Iterable[Any]) -> None:
        """From a Snapshot's Gateways (their ``access_log``: an EnvoyProxy's telemetry.accessLog)."""
        by: dict[str, list[LogSetting]] = {}
        for gw in gateways:
            if gw.access_log is None:
                continue
            compiled = settings_from_envoyproxy({"accessLog": gw.access_log})
            if compiled is not None:
                by[str(gw.ref)] = compiled[0]
        wanted = {s.path for settings in by.values() for s in settings if s.path}
        for path in [p for p in self._files if p not in wanted]:
            f = self._files.pop(path)
            if f is not None:
                f.close()
        self.by_gateway = by
        self.header_hungry = {gw for gw, settings in by.items() if any(uses_headers(x.render) for x in settings)}

    def write(self, rec: Record) -> None:
        for s in self.by_gateway.get(rec.gateway, self.default):
            line = s.render(rec)
            if s.path is None:
                self._logger.info(line)
                continue
            f = self._files.get(s.path, False)
            if f is False:
                f = self._files[s.path] = self._open(s.path)
            if f is None:
                self._logger.info(line)  # a sink that cannot be written: the line still reaches stdout
                continue
            try:
                f.write(line + "\n")
            except OSError as e:
                logging.getLogger("homeplane.gateway").error("access log sink %s: %s; dropped, writing to stdout", s.path, e.strerror or e)
                self._files[s.path] = None
                try:
                    f.close()
                except OSError:
                    pass
                self._logger.info(line)

    def _open(self, path: str) -> Any:
        """A File sink: only inside ``--access-log-dir``, a regular file, opened without
        following a link and without blocking (a FIFO nobody reads would stop the data plane)."""
        log = logging.getLogger("homeplane.gateway")
        if self.log_dir is None:
            log.error("access log sink %s: file sinks need --access-log-dir; writing to stdout", path)
            return None
        full = os.path.realpath(path if os.path.isabs(path) else os.path.join(self.log_dir, path))
        if os.path.commonpath([full, self.log_dir]) != self.log_dir:
            log.error("access log sink %s: outside --access-log-dir %s; writing to stdout", path, self.log_dir)
            return None
        try:
            fd = os.open(full, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.error("access log sink %s: %s; writing to stdout", path, e.strerror or e)
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            log.error("access log sink %s: not a regular file; writing to stdout", path)
            return None
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def close(self) -> None:
        for f in self._files.values():
            if f is not None:
                f.close()
        self._files.clear()

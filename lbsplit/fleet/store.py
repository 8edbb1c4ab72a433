"""The only etcd client: etcd v3's JSON gateway (/v3/kv/*, /v3/lease/*, /v3/watch) over HTTP(S).

It speaks through the standard library's http.client, one kept-alive connection per endpoint and
thread: importing requests cost a fleet command about 90 ms, and each call through it 2-3 ms,
for what is always a JSON POST to a fixed path. Keys and values are text (UTF-8); etcd wants
them base64-encoded in JSON, which is done here and nowhere else. Endpoints are tried in order
until one answers. Every failure is a StoreUnavailable with the endpoint (credentials never
printed) and the reason. Proxy variables ($HTTP_PROXY...) are not used: etcd is dialled directly.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import EnvironmentProblem
from ..validate import redact


class StoreUnavailable(EnvironmentProblem):
    """No etcd endpoint answered (or answered with an error)."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    mod_revision: int  # etcd's revision of the last change to this key
    lease: int = 0
    create_revision: int = 0  # etcd's revision of this key's creation (an election's fencing token)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _text(b64: str) -> str:
    return base64.b64decode(b64).decode("utf-8")


def _prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with prefix": the prefix with its last byte plus one."""
    raw = bytearray(prefix.encode("utf-8"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return base64.b64encode(b"\0").decode("ascii")  # the whole key space
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


UNAUTHENTICATED = 16  # the gRPC status etcd's gateway puts in "code" when an auth token expired or is unknown


def _grpc_code(body: bytes) -> int | None:
    """The gRPC status code in an error answer of etcd's gateway ({"error": ..., "code": N})."""
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


def _why(e: BaseException) -> str:
    """What went wrong, in words that carry no URL or credential."""
    name = type(e).__name__
    if "SSL" in name or "Certificate" in name:
        return f"SSLError ({getattr(e, 'reason', None) or name})"
    return name


# A kept-alive connection the server closed while idle fails like this on its next use; the
# request never reached etcd, so it is sent once more on a new connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _Endpoint:
    """One client URL: where to connect and how (TLS context made once, on first use)."""

    def __init__(self, url: str, ca_file, cert):
        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self._ca_file, self._cert, self._context = ca_file, cert, None

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        if not self.https:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        if self._context is None:
            import ssl  # only https endpoints pay for it

            context = ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file else None)
            if self._cert:
                context.load_cert_chain(str(self._cert[0]), str(self._cert[1]))
            self._context = context
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._context)


class Etcd:
    """A client for one etcd cluster, given its client URLs. Safe to share between threads."""

    def __init__(self, endpoints: tuple[str, ...], timeout: float = 5.0, ca_file=None,
                 cert: tuple | None = None, user: str | None = None, password: str | None = None):
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout = timeout
        self._targets = [_Endpoint(e, ca_file, cert) for e in self.endpoints]
        self._credentials = (user, password) if user else None
        self._token: str | None = None
        self._local = threading.local()  # this thread's open connections, by endpoint
        self._streams: set[socket.socket] = set()  # the sockets of open watch streams, for close()
        self._closed = False  # set by close(): no watch stream opens after it

    @classmethod
    def for_fleet(cls, fleet, timeout: float = 5.0) -> "Etcd":
        """The client a [fleet] section describes (TLS files, user and password)."""
        cert = (fleet.cert_file, fleet.key_file) if fleet.cert_file else None
        return cls(fleet.etcd, timeout=timeout, ca_file=fleet.ca_file, cert=cert, user=fleet.user,
                   password=fleet.password() if fleet.user else None)

    def twin(self) -> "Etcd":
        """A client of the same cluster with connections of its own (for a watch that another thread ends)."""
        other = copy.copy(self)
        other._local, other._streams, other._closed = threading.local(), set(), False
        return other

    # ---- transport
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def _post(self, target: _Endpoint, path: str, body: dict) -> tuple[int, bytes]:
        """One POST on this thread's kept-alive connection to `target`; a stale connection is replaced once."""
        pool = self._local.__dict__.setdefault("connections", {})
        payload = json.dumps(body).encode("utf-8")
        for attempt in (0, 1):
            conn = pool.pop(target.url, None)
            fresh = conn is None
            if fresh:
                conn = target.connect(self.timeout)
            try:
                conn.request("POST", target.base + path, body=payload, headers=self._headers())
                response = conn.getresponse()
                data = response.read()
            except _STALE:
                conn.close()
                if fresh or attempt:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            if response.will_close:
                conn.close()
            else:
                pool[target.url] = conn
            return response.status, data
        raise AssertionError("unreachable")

    def _authenticate(self) -> None:
        """etcd v3 auth: a token from /v3/auth/authenticate, sent as the Authorization header."""
        user, password = self._credentials
        self._token = None
        answer = self._call("/v3/auth/authenticate", {"name": user, "password": password or ""}, retried=True)
        self._token = str(answer.get("token", ""))

    def _call(self, path: str, body: dict, retried: bool = False) -> dict:
        if self._credentials and not retried:
            if self._token is None:
                self._authenticate()
            try:
                return self._call(path, body, retried=True)
            except StoreUnavailable as e:
                if not e.details.get("auth_expired"):
                    raise
                self._authenticate()  # the token expired (or etcd restarted): once more with a new one
                return self._call(path, body, retried=True)
        problems, auth_expired = [], False
        for target in self._targets:
            try:
                status, data = self._post(target, path, body)
            except (OSError, http.client.HTTPException) as e:
                problems.append(f"{redact(target.url)}: {_why(e)}")
                continue
            if status != 200:
                problems.append(f"{redact(target.url)}: HTTP {status} {data[:200].decode('utf-8', 'replace')}")
                auth_expired = auth_expired or _grpc_code(data) == UNAUTHENTICATED
                continue
            try:
                return json.loads(data)
            except ValueError:
                problems.append(f"{redact(target.url)}: the answer is not JSON")
        raise StoreUnavailable(f"etcd {path} failed on every endpoint ({'; '.join(problems)}); "
                               "check fleet.etcd and that etcd runs", {"auth_expired": auth_expired})

    def close(self) -> None:
        """Close this thread's connections and every open watch stream (a watching thread then ends).

        A watch still connecting when close() runs ends too: the flag is set before the streams are shut,
        and a stream checks it after registering, so one of the two always sees the other."""
        self._closed = True
        for conn in self._local.__dict__.pop("connections", {}).values():
            conn.close()
        for sock in list(self._streams):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- keys
    @staticmethod
    def _entry(kv: dict) -> Entry:
        return Entry(_text(kv["key"]), _text(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                     int(kv.get("lease", 0)), int(kv.get("create_revision", 0)))

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Set `key`; returns the store's revision after the change."""
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._call("/v3/kv/put", body)["header"]["revision"])

    def get(self, key: str) -> Entry | None:
        kvs = self._call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return self._entry(kvs[0]) if kvs else None

    def prefix(self, prefix: str) -> list[Entry]:
        """Every key under `prefix`, in key order."""
        answer = self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return [self._entry(kv) for kv in answer.get("kvs", [])]

    def read(self, *keys: str) -> tuple[list[list[Entry]], int]:
        """Several reads at one revision in one round trip: a key ending in "/" is read as a prefix.

        Returns the entries per key, in order, and the store's revision they were read at.
        """
        ranges = [{"request_range": {"key": _b64(k), **({"range_end": _prefix_end(k)} if k.endswith("/") else {})}}
                  for k in keys]
        answer = self._call("/v3/kv/txn", {"success": ranges})
        results = [[self._entry(kv) for kv in r.get("response_range", {}).get("kvs", [])]
                   for r in answer.get("responses", [])]
        if len(results) != len(keys):
            raise StoreUnavailable(f"etcd /v3/kv/txn answered {len(results)} reads for {len(keys)}; is it etcd v3?")
        return results, int(answer.get("header", {}).get("revision", 0))

    def delete(self, key: str) -> None:
        self._call("/v3/kv/deleterange", {"key": _b64(key)})

    def swap(self, key: str, value: str, mod_revision: int, lease: int = 0, fence: "Fence | None" = None) -> bool:
        """Set `key` only if it is unchanged since `mod_revision` (0: only if it does not exist yet).

        The compare-and-swap two racing operators meet: exactly one of them wins. With `fence`,
        also only while that key still has the fence's create revision (a leader's own key).
        """
        if mod_revision == 0:
            compare = {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        else:
            compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}
        return self._swap([compare, *_fenced(fence)], key, value, lease)

    def swap_value(self, key: str, expected: str, value: str, fence: "Fence | None" = None) -> bool:
        """Set `key` to `value` only if it still holds exactly `expected` (and the fence holds)."""
        compare = {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(expected)}
        return self._swap([compare, *_fenced(fence)], key, value)

    def put_fenced(self, key: str, value: str, fence: "Fence | None") -> bool:
        """Set `key` unconditionally, but only while the fence holds (always, without one)."""
        if fence is None:
            self.put(key, value)
            return True
        return self._swap(_fenced(fence), key, value)

    def _swap(self, compares: list[dict], key: str, value: str, lease: int = 0) -> bool:
        put = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = self._call("/v3/kv/txn", {"compare": compares, "success": [{"request_put": put}]})
        return bool(answer.get("succeeded", False))

    # ---- watch
    def watch(self, key: str, stop, start_revision: int = 0) -> "Iterator[int]":
        """Yield etcd's revision each time `key` changes (every key under it when `key` ends in "/"),
        until `stop` (an Event) is set, close() is called, or the stream breaks.

        One streaming POST to /v3/watch on its own connection; `start_revision` replays changes
        from that revision on. A broken stream raises StoreUnavailable (the caller reconnects).
        """
        request = {"key": _b64(key)}
        if key.endswith("/"):
            request["range_end"] = _prefix_end(key)
        if start_revision:
            request["start_revision"] = str(start_revision)
        if self._credentials and self._token is None:
            self._authenticate()
        problems = []
        for target in self._targets:
            conn, sock = target.connect(self.timeout), None
            try:
                conn.request("POST", target.base + "/v3/watch", body=json.dumps({"create_request": request}),
                             headers=self._headers())
                sock = conn.sock  # kept: a response that will close takes the socket from the connection
                self._streams.add(sock)
                if self._closed:  # close() ran before this stream was registered (or shut the one before)
                    problems.append("the client was closed")
                    break
                response = conn.getresponse()
                if response.status != 200:
                    problems.append(f"{redact(target.url)}: HTTP {response.status}")
                    if self._credentials:
                        self._token = None  # an expired token: the caller's next watch gets a new one
                    continue
                sock.settimeout(None)  # a quiet key is not a dead stream
                while not stop.is_set():
                    line = response.readline()
                    if not line:
                        problems.append(f"{redact(target.url)}: stream closed")
                        break
                    if stop.is_set():
                        return
                    try:
                        data = json.loads(line)
                    except ValueError:
                        continue
                    if data.get("error"):
                        problems.append(f"{redact(target.url)}: {str(data['error'])[:200]}")
                        if self._credentials and "auth" in str(data["error"]):
                            self._token = None
                        break
                    result = data.get("result", {})
                    if result.get("events"):
                        yield int(result.get("header", {}).get("revision", 0))
            except (OSError, http.client.HTTPException, ValueError) as e:
                problems.append(f"{redact(target.url)}: {_why(e)}")
            finally:
                self._streams.discard(sock)
                conn.close()
            if stop.is_set():
                return
        raise StoreUnavailable(f"etcd watch of {key} ended ({'; '.join(problems) or 'stream closed'})")

    # ---- leases
    def grant(self, ttl: int) -> int:
        """A lease of `ttl` seconds; keys put under it vanish when it is not kept alive."""
        return int(self._call("/v3/lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew a lease; returns its new TTL (0: it had already expired)."""
        answer = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", answer).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self._call("/v3/lease/revoke", {"ID": str(lease)})

    def lease_ttl(self, lease: int) -> int:
        """Seconds the lease has left by etcd's own clock; -1 when it has expired (or never existed)."""
        answer = self._call("/v3/lease/timetolive", {"ID": str(lease)})
        return int(answer.get("TTL", -1))


@dataclass(frozen=True)
class Fence:
    """A write is fenced by a key's create revision: it succeeds only while that very key exists,
    so a leader whose lease lapsed (and whose key vanished with it) can no longer write."""

    key: str
    create_revision: int


def _fenced(fence: Fence | None) -> list[dict]:
    if fence is None:
        return []
    return [{"key": _b64(fence.key), "target": "CREATE", "result": "EQUAL",
             "create_revision": str(fence.create_revision)}]

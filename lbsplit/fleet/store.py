"""The only etcd client: etcd v3's JSON gateway (/v3/kv/*, /v3/lease/*) over HTTP, through requests.

Keys and values are text (UTF-8); etcd wants them base64-encoded in JSON, which is done
here and nowhere else. Endpoints are tried in order until one answers. Every failure is a
StoreUnavailable with the endpoint (credentials never printed) and the reason.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

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


class Etcd:
    """A client for one etcd cluster, given its client URLs."""

    def __init__(self, endpoints: tuple[str, ...], timeout: float = 5.0, session=None, ca_file=None,
                 cert: tuple | None = None, user: str | None = None, password: str | None = None):
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout = timeout
        self._session = session
        # Given with every request: requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE override a
        # Session's own `verify`, which would drop fleet.ca_file on hosts that set them.
        self._tls = {"verify": str(ca_file) if ca_file else True, "cert": tuple(map(str, cert)) if cert else None}
        self._credentials = (user, password) if user else None

    @classmethod
    def for_fleet(cls, fleet, timeout: float = 5.0) -> "Etcd":
        """The client a [fleet] section describes (TLS files, user and password)."""
        cert = (fleet.cert_file, fleet.key_file) if fleet.cert_file else None
        return cls(fleet.etcd, timeout=timeout, ca_file=fleet.ca_file, cert=cert, user=fleet.user,
                   password=fleet.password() if fleet.user else None)

    @property
    def session(self):
        if self._session is None:
            import requests  # only the fleet commands pay for it

            self._session = requests.Session()
            if self._credentials:
                try:
                    self._authenticate()
                except StoreUnavailable:
                    self._session = None  # the next call tries again
                    raise
        return self._session

    def _authenticate(self) -> None:
        """etcd v3 auth: a token from /v3/auth/authenticate, sent as the Authorization header."""
        user, password = self._credentials
        self._session.headers.pop("Authorization", None)
        answer = self._call("/v3/auth/authenticate", {"name": user, "password": password or ""})
        self._session.headers["Authorization"] = str(answer.get("token", ""))

    def _call(self, path: str, body: dict, retried: bool = False) -> dict:
        import requests

        problems = []
        session = self.session if path != "/v3/auth/authenticate" else self._session
        if self._credentials and not retried and path != "/v3/auth/authenticate":
            try:
                return self._call(path, body, retried=True)
            except StoreUnavailable as e:
                if "auth token" not in str(e):
                    raise
                self._authenticate()  # the token expired (or etcd restarted): once more with a new one
        for endpoint in self.endpoints:
            try:
                response = session.post(f"{endpoint}{path}", json=body, timeout=(self.timeout, self.timeout), **self._tls)
            except requests.RequestException as e:
                problems.append(f"{redact(endpoint)}: {type(e).__name__}")
                continue
            if response.status_code != 200:
                problems.append(f"{redact(endpoint)}: HTTP {response.status_code} {response.text[:200]}")
                continue
            try:
                return response.json()
            except ValueError:
                problems.append(f"{redact(endpoint)}: the answer is not JSON")
        raise StoreUnavailable(f"etcd {path} failed on every endpoint ({'; '.join(problems)}); "
                               "check fleet.etcd and that etcd runs")

    @staticmethod
    def _entry(kv: dict) -> Entry:
        return Entry(_text(kv["key"]), _text(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                     int(kv.get("lease", 0)))

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

    def delete(self, key: str) -> None:
        self._call("/v3/kv/deleterange", {"key": _b64(key)})

    def swap(self, key: str, value: str, mod_revision: int, lease: int = 0) -> bool:
        """Set `key` only if it is unchanged since `mod_revision` (0: only if it does not exist yet).

        The compare-and-swap two racing operators meet: exactly one of them wins.
        """
        if mod_revision == 0:
            compare = {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        else:
            compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}
        put = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = self._call("/v3/kv/txn", {"compare": [compare], "success": [{"request_put": put}]})
        return bool(answer.get("succeeded", False))

    def watch(self, key: str, stop) -> "Iterator[int]":
        """Yield etcd's revision each time `key` changes, until `stop` (an Event) is set or the stream breaks.

        One streaming POST to /v3/watch; a broken stream raises StoreUnavailable (the caller reconnects).
        """
        import requests

        problems = []
        for endpoint in self.endpoints:
            try:
                response = self.session.post(f"{endpoint}/v3/watch", json={"create_request": {"key": _b64(key)}},
                                             stream=True, timeout=(self.timeout, None), **self._tls)
            except requests.RequestException as e:
                problems.append(f"{redact(endpoint)}: {type(e).__name__}")
                continue
            if response.status_code != 200:
                problems.append(f"{redact(endpoint)}: HTTP {response.status_code}")
                response.close()
                if self._credentials:
                    self._authenticate()  # an expired token: the caller's next watch has a new one
                continue
            try:
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    if not line:
                        continue
                    try:
                        data = json.loads(line)
                    except ValueError:
                        continue
                    if data.get("error"):
                        problems.append(f"{redact(endpoint)}: {str(data['error'])[:200]}")
                        if self._credentials and "auth" in str(data["error"]):
                            self._authenticate()
                        break
                    result = data.get("result", {})
                    if result.get("events"):
                        yield int(result.get("header", {}).get("revision", 0))
                        if stop.is_set():
                            return
            except requests.RequestException as e:
                problems.append(f"{redact(endpoint)}: {type(e).__name__}")
            finally:
                response.close()
            if stop.is_set():
                return
        raise StoreUnavailable(f"etcd watch of {key} ended ({'; '.join(problems) or 'stream closed'})")

    def grant(self, ttl: int) -> int:
        """A lease of `ttl` seconds; keys put under it vanish when it is not kept alive."""
        return int(self._call("/v3/lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew a lease; returns its new TTL (0: it had already expired)."""
        answer = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", answer).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self._call("/v3/lease/revoke", {"ID": str(lease)})

"""The etcd store (the fleet's only etcd client) against a real single-node etcd on loopback."""

import shutil
import signal
import subprocess
import threading
import time

import pytest

from lbsplit.demo.sandbox import free_port
from lbsplit.fleet.store import Etcd, StoreUnavailable


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    binary = shutil.which("etcd")
    if binary is None:
        pytest.fail("etcd is not installed; `make test` installs Debian's etcd-server")
    data = tmp_path_factory.mktemp("etcd")
    client, peer = free_port(), free_port()
    proc = subprocess.Popen(
        [binary, "--data-dir", str(data / "d"), "--name", "default",
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Etcd((f"http://127.0.0.1:{client}",), timeout=2)
    deadline = time.monotonic() + 20
    while True:
        try:
            store.put("/ready", "1")
            break
        except StoreUnavailable:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("etcd did not start on loopback within 20 s")
            time.sleep(0.1)
    yield store
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_put_get_prefix_and_delete_round_trip(etcd):
    revision = etcd.put("/lbsplit/t1/hosts/lb-1", '{"generation": 3}')
    etcd.put("/lbsplit/t1/hosts/lb-2", "负载均衡 2")
    etcd.put("/lbsplit/t10/other", "not under /lbsplit/t1/")
    entry = etcd.get("/lbsplit/t1/hosts/lb-1")
    assert entry.value == '{"generation": 3}' and entry.mod_revision == revision
    assert [(e.key, e.value) for e in etcd.prefix("/lbsplit/t1/")] == [
        ("/lbsplit/t1/hosts/lb-1", '{"generation": 3}'), ("/lbsplit/t1/hosts/lb-2", "负载均衡 2")]
    etcd.delete("/lbsplit/t1/hosts/lb-2")
    assert etcd.get("/lbsplit/t1/hosts/lb-2") is None and etcd.get("/nothing/here") is None


def test_two_operators_racing_a_swap_exactly_one_wins(etcd):
    etcd.put("/lbsplit/t2/desired", "10")
    seen = etcd.get("/lbsplit/t2/desired").mod_revision
    barrier, results = threading.Barrier(2), {}

    def operator(value):
        barrier.wait()
        results[value] = etcd.swap("/lbsplit/t2/desired", value, seen)

    threads = [threading.Thread(target=operator, args=(v,)) for v in ("30", "50")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, True]
    winner = next(v for v, won in results.items() if won)
    assert etcd.get("/lbsplit/t2/desired").value == winner
    assert etcd.swap("/lbsplit/t2/new", "x", 0) is True and etcd.swap("/lbsplit/t2/new", "y", 0) is False


def test_a_key_under_a_lease_vanishes_unless_kept_alive(etcd):
    kept, lapsed = etcd.grant(2), etcd.grant(2)
    etcd.put("/lbsplit/t3/hosts/alive", "1", lease=kept)
    etcd.put("/lbsplit/t3/hosts/dead", "1", lease=lapsed)
    for _ in range(6):  # 3 s, past the 2 s TTL
        assert etcd.keepalive(kept) > 0
        time.sleep(0.5)
    assert etcd.get("/lbsplit/t3/hosts/alive") is not None
    assert etcd.get("/lbsplit/t3/hosts/dead") is None
    assert etcd.keepalive(lapsed) == 0
    etcd.revoke(kept)
    assert etcd.get("/lbsplit/t3/hosts/alive") is None


def test_a_dead_endpoint_is_skipped_and_all_dead_is_one_clear_error(etcd):
    dead = f"http://user:secret@127.0.0.1:{free_port()}"
    both = Etcd((dead, etcd.endpoints[0]), timeout=1)
    both.put("/lbsplit/t4/k", "v")
    assert both.get("/lbsplit/t4/k").value == "v"
    with pytest.raises(StoreUnavailable) as caught:
        Etcd((dead,), timeout=1).get("/lbsplit/t4/k")
    message = str(caught.value)
    assert "127.0.0.1" in message and "secret" not in message and "fleet.etcd" in message


def test_a_watch_yields_when_the_key_changes_and_stops_on_request(etcd):
    stop = threading.Event()
    seen = []

    # Replayed from the revision after `base`, so a stream that opens late (a loaded machine) misses nothing.
    base = etcd.put("/lbsplit/t9/other", "before the watch")

    def follow():
        for revision in etcd.watch("/lbsplit/t9/desired", stop, start_revision=base + 1):
            seen.append(revision)
            if len(seen) == 2:
                stop.set()

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.5)  # usually the stream is open by now: the changes below arrive live
    etcd.put("/lbsplit/t9/other", "not watched")
    first = etcd.put("/lbsplit/t9/desired", "10")
    second = etcd.put("/lbsplit/t9/desired", "30")
    thread.join(timeout=10)
    assert not thread.is_alive() and seen == [first, second]


def test_user_and_password_authenticate_and_nothing_works_without_them(tmp_path):
    import requests

    from harness import EtcdProcess

    server = EtcdProcess(tmp_path)
    server.start()
    try:
        for path, body in (("/v3/auth/role/add", {"name": "root"}),
                           ("/v3/auth/user/add", {"name": "root", "password": "s3cret-pw"}),
                           ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                           ("/v3/auth/enable", {})):
            assert requests.post(server.url + path, json=body, timeout=5).status_code == 200, path
        with pytest.raises(StoreUnavailable) as refused:
            Etcd((server.url,), timeout=2).put("/lbsplit/auth/x", "1")
        assert "s3cret-pw" not in str(refused.value)
        with pytest.raises(StoreUnavailable) as wrong:
            Etcd((server.url,), timeout=2, user="root", password="wrong").put("/lbsplit/auth/x", "1")
        assert "wrong" not in str(wrong.value).replace("wrong password", "")
        store = Etcd((server.url,), timeout=2, user="root", password="s3cret-pw")
        store.put("/lbsplit/auth/x", "1")
        assert store.get("/lbsplit/auth/x").value == "1"
    finally:
        server.stop()


def test_tls_with_a_client_certificate_works_and_nothing_less_does(tmp_path, monkeypatch):
    # etcd serving https only and requiring a client certificate signed by its CA, as a
    # [fleet] section with ca_file, cert_file and key_file describes it.
    from lbsplit.config import load
    from harness import EtcdProcess, TlsFiles

    tls = TlsFiles(tmp_path)
    # Many hosts set these for every tool; requests would let them replace a Session's own CA.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(tls.client_cert))  # a certificate, but not the CA
    server = EtcdProcess(tmp_path, tls=tls)
    server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        config = tmp_path / "lbsplit.toml"
        config.write_text(f"""state_dir = "{tmp_path / 'state'}"
[nginx]
conf = "{tmp_path / 'nginx.conf'}"
output_dir = "{tmp_path / 'out'}"
[upstreams]
v1 = ["127.0.0.1:8081"]
v2 = ["127.0.0.1:8082"]
[fleet]
etcd = ["{server.url}"]
prefix = "/lbsplit/tls"
host = "lb-1"
ca_file = "{tls.ca}"
cert_file = "{tls.client_cert}"
key_file = "{tls.client_key}"
""")
        store = Etcd.for_fleet(load(config).fleet, timeout=2)
        store.put("/lbsplit/tls/x", "over tls")
        assert store.get("/lbsplit/tls/x").value == "over tls"
        stop = threading.Event()
        seen = []

        def follow():
            for revision in store.watch("/lbsplit/tls/x", stop):
                seen.append(revision)
                stop.set()

        thread = threading.Thread(target=follow)
        thread.start()
        time.sleep(0.5)
        changed = store.put("/lbsplit/tls/x", "again")
        thread.join(timeout=10)
        assert not thread.is_alive() and seen == [changed]

        with pytest.raises(StoreUnavailable, match="SSLError"):  # the system's CAs do not know this one
            Etcd((server.url,), timeout=2, cert=(tls.client_cert, tls.client_key)).get("/lbsplit/tls/x")
        with pytest.raises(StoreUnavailable):  # the CA, but no client certificate
            Etcd((server.url,), timeout=2, ca_file=tls.ca).get("/lbsplit/tls/x")
        with pytest.raises(StoreUnavailable):  # plain http to an https-only etcd
            Etcd((server.url.replace("https", "http"),), timeout=2).get("/lbsplit/tls/x")
    finally:
        server.stop()


def test_a_kept_alive_connection_etcd_dropped_is_replaced_without_an_error(tmp_path):
    # The store keeps one connection per endpoint; etcd restarting (same port) leaves it dead.
    # The next call notices the stale connection, opens a new one and succeeds.
    from harness import EtcdProcess

    server = EtcdProcess(tmp_path)
    server.start()
    try:
        store = Etcd((server.url,), timeout=2)
        store.put("/lbsplit/t5/k", "before")
        kept = store._local.connections[store.endpoints[0]]
        server.stop()
        server.start()
        assert store.get("/lbsplit/t5/k").value == "before"
        assert store._local.connections[store.endpoints[0]] is not kept  # a new connection carried it
        store.put("/lbsplit/t5/k", "after")
        assert store.get("/lbsplit/t5/k").value == "after"
    finally:
        server.stop()


def _watch_in_a_thread(watcher: Etcd, key: str) -> tuple[threading.Thread, list[str]]:
    """A thread that watches `key` until the watch ends; the list gets the StoreUnavailable it ended with."""
    ended: list[str] = []

    def follow():
        try:
            for _ in watcher.watch(key, threading.Event()):
                pass
        except StoreUnavailable as e:
            ended.append(str(e))

    thread = threading.Thread(target=follow)
    thread.start()
    return thread, ended


def test_close_ends_a_watch_that_another_thread_holds_open(etcd):
    # The operator's Waker ends its stream this way; a watch on a quiet key would block forever.
    watcher = etcd.twin()
    thread, ended = _watch_in_a_thread(watcher, "/lbsplit/t6/quiet/")
    time.sleep(0.5)  # the stream is open and quiet
    assert thread.is_alive()
    watcher.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and ended and "watch of /lbsplit/t6/quiet/ ended" in ended[0]
    assert etcd.put("/lbsplit/t6/other", "1") > 0  # the original client is untouched


def test_close_ends_a_watch_that_had_not_opened_yet_and_never_moves_to_the_next_endpoint(etcd):
    # Two endpoints (the same etcd twice): a stream shut by close() must end the watch, not fail over.
    watcher = Etcd((etcd.endpoints[0], etcd.endpoints[0]), timeout=2)
    thread, ended = _watch_in_a_thread(watcher, "/lbsplit/t10/quiet/")
    time.sleep(0.5)
    watcher.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and ended and "the client was closed" in ended[0], ended
    closed_first = Etcd((etcd.endpoints[0],), timeout=2)
    closed_first.close()  # before any watch: the next watch ends at once instead of blocking forever
    with pytest.raises(StoreUnavailable, match="the client was closed"):
        next(closed_first.watch("/lbsplit/t10/quiet/", threading.Event()))
    assert closed_first.put("/lbsplit/t10/k", "1") > 0  # keys still work on a closed client

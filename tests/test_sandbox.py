"""The sandbox's own helpers, which every nginx and etcd test relies on."""

import socket

import pytest

import lbsplit.demo.sandbox as sandbox
from conftest import REPO, run_cli
from lbsplit.demo.sandbox import PORT_FLOOR, Sandbox, _ephemeral_low, free_port
from lbsplit.nginx.process import is_alive


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    # A client's outgoing connection takes its local port from the ephemeral range; a server port
    # picked there could be taken between the pick and nginx's bind ("Address already in use").
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if _ephemeral_low() - PORT_FLOOR >= 1000:
        assert all(PORT_FLOOR <= p < _ephemeral_low() for p in ports)
    for port in ports[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_port_another_server_holds_is_skipped(monkeypatch):
    if _ephemeral_low() - PORT_FLOOR < 1000:
        pytest.skip("this kernel's ephemeral range starts too low: free_port() lets the kernel pick")
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with held:
        port = next(p for p in range(PORT_FLOOR + 7000, PORT_FLOOR + 9000) if _binds(held, p))
        held.listen()
        picks = iter([port, port, *range(port + 1, port + 100)])
        monkeypatch.setattr(sandbox, "_pick", type("Picks", (), {"randrange": lambda self, a, b, step=1: next(picks)})())
        assert port < free_port() < port + 100


def test_processes_that_share_the_ports_never_pick_the_same_one(monkeypatch):
    if _ephemeral_low() - PORT_FLOOR < 3000:
        pytest.skip("this kernel's ephemeral range starts too low: free_port() lets the kernel pick")
    monkeypatch.setattr(sandbox, "_share", sandbox._share)  # put back this worker's own share afterwards
    monkeypatch.setattr(sandbox, "_handed_out", set())
    picked = {}
    for index in range(3):
        sandbox.share_ports(index, 3)
        picked[index] = {free_port() for _ in range(200)}
        assert all(p % 3 == index and PORT_FLOOR <= p < _ephemeral_low() for p in picked[index])
    assert len(picked[0] | picked[1] | picked[2]) == 600
    with pytest.raises(ValueError):
        sandbox.share_ports(3, 3)


def _binds(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def test_a_front_that_cannot_bind_leaves_no_backend_running(tmp_path, nginx_bin):
    sb = Sandbox(tmp_path / "sb", binary=nginx_bin, nginx_dir=REPO / "nginx")
    sb.write_config()
    assert run_cli(sb.config_path, "init").returncode == 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", sb.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match="Address already in use"):
            sb.start()
    backend = sb.backends.pid()
    assert backend is None or not is_alive(backend), "the backends outlived the failed start"
    assert sb.front.pid() is None

"""Two "hosts" on one machine: network namespaces the test makes itself, for a Bytewax cluster whose processes
talk over a link the test can cut.

    host a (netns)                      host b (netns)
    10.231.N.1  <------- link -------->  10.231.N.2       Bytewax's own traffic (the cluster's addresses)
    10.232.N.2                           10.233.N.2
        |  uplink                            |  uplink
    10.232.N.1                           10.233.N.1       root namespace: a TCP relay per server port, to
                                                           the local stack's servers on 127.0.0.1

Everything stays on this machine. The stack's servers listen on loopback only, which another namespace cannot
reach: each host reaches them through a relay on its uplink's root-side address, which the pipeline's config
names as the broker's and InfluxDB's host. Cutting the link leaves the uplinks alone: the two processes lose each
other, not the broker. Needs root (``ip netns``)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

_LINK_NET, _UPLINK_NETS = "10.231", ("10.232", "10.233")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_available() -> str | None:
    """None when this machine can make network namespaces, else why not."""
    name = f"fwprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (RuntimeError, OSError) as exc:
        return str(exc)
    _ip("netns", "del", name)
    return None


class Relay:
    """Accepts on ``listen`` and pipes every connection to ``target``, both ways, until either side closes."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen, reuse_port=False)
        self._server.settimeout(0.2)
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name=f"relay-{listen[0]}:{listen[1]}", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, 5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        # The listening socket stays bound while the acceptor waits in accept() on it, even once closed here:
        # the next test's relay on the same address then failed with "Address already in use". The acceptor
        # notices the stop within its 0.2 s timeout, and takes no connection after that.
        self._acceptor.join(5)
        self._server.close()
        with self._lock:
            for sock in self._conns:
                with contextlib.suppress(OSError):
                    sock.close()


@dataclass
class TwoHosts:
    """Hosts "a" and "b". ``server_ports``: the local stack's ports each host gets a relay for."""

    server_ports: list[int]
    tag: str = field(default_factory=lambda: str(os.getpid() % 250))
    _relays: list[Relay] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = int(self.tag)
        self.namespaces = {"a": f"fwa{n}", "b": f"fwb{n}"}
        self.link_address = {"a": f"{_LINK_NET}.{n}.1", "b": f"{_LINK_NET}.{n}.2"}
        # The root side of each host's uplink: where that host finds the stack's servers.
        self.servers_address = {h: f"{net}.{n}.1" for h, net in zip(("a", "b"), _UPLINK_NETS, strict=True)}
        self._link_ends = {"a": f"fwla{n}", "b": f"fwlb{n}"}
        try:
            self._make(n)
        except BaseException:
            self.close()
            raise

    def _make(self, n: int) -> None:
        # Left over by a run that was killed before its clean-up (same pid modulo 250): start from nothing.
        for host, ns in self.namespaces.items():
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", f"fwu{host}{n}")
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", ns)
        for ns in self.namespaces.values():
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # The link between the two hosts.
        _ip("link", "add", self._link_ends["a"], "type", "veth", "peer", "name", self._link_ends["b"])
        for host, ns in self.namespaces.items():
            end = self._link_ends[host]
            _ip("link", "set", end, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.link_address[host]}/24", "dev", end)
            _ip("-n", ns, "link", "set", end, "up")
        # Each host's uplink to the root namespace, and a relay there per server port.
        for (host, ns), net in zip(self.namespaces.items(), _UPLINK_NETS, strict=True):
            root_end, ns_end = f"fwu{host}{n}", f"fwd{host}{n}"
            _ip("link", "add", root_end, "type", "veth", "peer", "name", ns_end)
            self._made.append(root_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("addr", "add", f"{net}.{n}.1/24", "dev", root_end)
            _ip("link", "set", root_end, "up")
            _ip("-n", ns, "addr", "add", f"{net}.{n}.2/24", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            for port in self.server_ports:
                self._relays.append(Relay((self.servers_address[host], port), ("127.0.0.1", port)))

    def run_prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host``."""
        return ["ip", "netns", "exec", self.namespaces[host]]

    def cut(self) -> None:
        """Take the link between the hosts down: packets between them are lost, connections stay open."""
        for host, ns in self.namespaces.items():
            _ip("-n", ns, "link", "set", self._link_ends[host], "down")

    def mend(self) -> None:
        for host, ns in self.namespaces.items():
            _ip("-n", ns, "link", "set", self._link_ends[host], "up")

    def link_works(self) -> bool:
        """Whether host a reaches host b over the link: a connection to a closed port of b is refused when it
        does, and unreachable (or unanswered) when the link is cut."""
        probe = (
            "import errno, socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({self.link_address['b']!r}, 9), 1).close()\n"
            "except OSError as exc:\n"
            "    sys.exit(0 if exc.errno == errno.ECONNREFUSED else 1)\n"
        )
        done = subprocess.run([*self.run_prefix("a"), sys.executable, "-c", probe], capture_output=True, timeout=10)
        return done.returncode == 0

    def close(self) -> None:
        for relay in self._relays:
            relay.close()
        self._relays.clear()
        # Deleting a namespace deletes the veth ends in it, and with them their peers.
        for name in reversed(self._made):
            with contextlib.suppress(RuntimeError):
                if name in self.namespaces.values():
                    _ip("netns", "del", name)
                else:
                    _ip("link", "del", name)
        self._made.clear()

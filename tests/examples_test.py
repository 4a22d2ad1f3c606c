#!/usr/bin/env python3
"""Runs every example as a user would, with REACTOR_TRACE=1, and checks what
it prints. Servers are started on free loopback ports and stopped by PID;
every step has a timeout.

    python3 tests/examples_test.py [build/examples]
    python3 tests/examples_test.py --wine build/windows/examples

--wine: the Windows builds (NAME.exe) under wine, where the loop is WSAPoll
and SIGINT reaches a program as Ctrl-C. What Windows does not offer is
left out: stdin as a watched descriptor (stdin_echo), UNIX sockets, and
SO_REUSEPORT (echo_server --threads).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

WINE = "--wine" in sys.argv[1:]
ARGS = [a for a in sys.argv[1:] if a != "--wine"]
BIN = ARGS[0] if ARGS else "build/examples"
POLLER = "WSAPoll" if WINE else "poll()"
SIGINT_NAME = "Ctrl-C" if WINE else "SIGINT"
ENV = dict(os.environ, REACTOR_TRACE="1")
failures = []


def check(name, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else ": " + detail))
    if not condition:
        failures.append(name)


def command(args):
    """The command line of example args[0] (under wine with --wine)."""
    if WINE:
        return ["wine", os.path.join(BIN, args[0] + ".exe")] + args[1:]
    return [os.path.join(BIN, args[0])] + args[1:]


def run(args, stdin=b"", timeout=20):
    p = subprocess.run(command(args), input=stdin, capture_output=True, env=ENV, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


class Server:
    """An example server started on port 0; its first line says where it listens."""

    def __init__(self, args):
        self.proc = subprocess.Popen(command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        line = self.proc.stdout.readline().decode()
        self.first_line = line
        m = (re.search(r"(?:\d+\.\d+\.\d+\.\d+|\[[^\]]*\]):(\d+)", line)  # the first address printed
             or re.search(r"listening on (\d+)", line))
        if not m:
            self.stop()
            raise RuntimeError("%s did not say where it listens: %r" % (args[0], line))
        self.port = int(m.group(1))

    def stop(self):
        self.proc.send_signal(signal.SIGINT)  # the examples stop cleanly on SIGINT
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def recv_until(sock, needle, timeout=10):
    sock.settimeout(timeout)
    data = b""
    while needle not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def main():
    # timers: the time API, traced.
    rc, out, err = run(["timers"])
    check("timers runs", rc == 0 and "idle timeout (after two resets)" in out and "this never prints" not in out, out)
    check("timers trace", ("turn 1: %s waited" % POLLER) in err and "timer from examples/timers.cpp" in err, err[:500])

    # stdin_echo: a foreign descriptor.
    if not WINE:
        rc, out, err = run(["stdin_echo"], b"hello\nworld\n")
        check("stdin_echo echoes", rc == 0 and "echo: hello" in out and "stdin closed" in out, out)
        check("stdin_echo trace", "readable -> reader callback" in err, err[:500])

    # echo_server + echo_client.
    server = Server(["echo_server", "0"])
    rc, out, err = run(["echo_client", "127.0.0.1", str(server.port)], b"one\ntwo\n")
    check("echo_client talks to echo_server", rc == 0 and "server: one" in out and "closed cleanly" in out, out + err)
    check("echo_client trace", "EchoClient.connectionMade" in err and "EchoClient.dataReceived" in err, err[:800])
    port = server.port

    # port_forward in front of the echo server: 2 MB each way, intact.
    fwd = Server(["port_forward", "0", "127.0.0.1", str(server.port)])
    payload = os.urandom(2 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", fwd.port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        s.settimeout(10)
        while len(got) < len(payload):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += chunk
    check("port_forward relays 2 MB intact", got == payload, "got %d of %d bytes" % (len(got), len(payload)))
    rc, out, err = fwd.stop()
    check("port_forward trace", "ClientHalf.dataReceived" in err and "Target.dataReceived" in err, err[-800:])
    rc, out, err = server.stop()
    check("echo_server logs connections", "connection from 127.0.0.1" in out, out)
    check("echo_server trace", "Echo.dataReceived" in err and "Echo.connectionLost" in err, err[-800:])
    # The server has stopped: the client reports the refusal and exits.
    rc, out, err = run(["echo_client", "127.0.0.1", str(port)])
    check("echo_client reports a refused connection", rc == 0 and "connection failed: Connection was refused" in out,
          out + err[-300:])

    # Endpoint strings: the same two programs over a UNIX socket (not on
    # Windows), and a bad one.
    if not WINE:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "echo.sock")
            proc = subprocess.Popen([os.path.join(BIN, "echo_server"), "unix:" + path], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=ENV)
            first = proc.stdout.readline().decode()
            check("echo_server unix:PATH listens there", ("listening on " + path) in first, first)
            rc, out, err = run(["echo_client", "unix:" + path], b"over unix\n")
            check("echo_client unix:PATH talks to it", rc == 0 and "server: over unix" in out and "closed cleanly" in out,
                  out + err[-500:])
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
            check("echo_server removes its socket file on exit", not os.path.exists(path), path)

    rc, out, err = run(["echo_server", "bogus:1"])
    check("echo_server refuses a bad endpoint clearly", rc != 0 and "unknown endpoint type 'bogus'" in err, err)

    # echo_server --threads: two reactors share the port (SO_REUSEPORT, not
    # on Windows); 16 connections all echo, whichever reactor the kernel
    # gave them to, and one SIGINT stops both.
    if not WINE:
        server = Server(["echo_server", "0", "--threads", "2"])
        check("echo_server --threads 2 says so", "2 reactors on 2 threads" in server.first_line, server.first_line)
        conns = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(16)]
        for i, c in enumerate(conns):
            c.sendall(b"ping %d\n" % i)
        echoed = [recv_until(c, b"\n") for c in conns]
        for c in conns:
            c.close()
        check("echo_server --threads 2 echoes on 16 connections",
              echoed == [b"ping %d\n" % i for i in range(16)], repr(echoed[:3]))
        rc, out, err = server.stop()
        check("echo_server --threads 2 stops on SIGINT", rc == 0 and "Received SIGINT" in err, "rc %s: %s" % (rc, err[-500:]))

    # chat_server: two users.
    if os.path.exists(command(["chat_server"])[-1]):
        chat = Server(["chat_server", "0"])
        a = socket.create_connection(("127.0.0.1", chat.port), timeout=10)
        b = socket.create_connection(("127.0.0.1", chat.port), timeout=10)
        recv_until(a, b"name")
        recv_until(b, b"name")
        a.sendall(b"alice\n")
        recv_until(a, b"alice")
        b.sendall(b"bob\n")
        recv_until(a, b"bob")
        b.sendall(b"hi there\n")
        got = recv_until(a, b"hi there")
        check("chat_server relays between users", b"hi there" in got, repr(got))
        a.close()
        b.close()
        rc, out, err = chat.stop()
        check("chat_server trace", "dataReceived" in err, err[-500:])

    # irc_server: a bare CR is a line end, never relayed (no forged server lines).
    irc = Server(["irc_server", "0"])
    a = socket.create_connection(("127.0.0.1", irc.port), timeout=10)
    b = socket.create_connection(("127.0.0.1", irc.port), timeout=10)
    a.sendall(b"NICK alice\r\nUSER a 0 * :A\r\nJOIN #t\r\n")
    b.sendall(b"NICK bob\r\nUSER b 0 * :B\r\nJOIN #t\r\n")
    recv_until(a, b"366")
    recv_until(b, b"366")
    b.sendall(b"PRIVMSG #t :x\r:root!r@toy.irc PRIVMSG #t :forged\r\nPRIVMSG #t :done\r\n")
    got = recv_until(a, b"done")
    check("irc_server never relays a bare CR", b"\r:root!" not in got and b":root!" not in got, repr(got))
    a.close()
    b.close()
    irc.stop()

    # udp_query: a Deferred per datagram question, with a timeout.
    rc, out, err = run(["udp_query"])
    check("udp_query runs", rc == 0 and "client: alpha -> 10.0.0.1" in out and "client: gamma -> NXDOMAIN" in out
          and "client: drop.me -> defer.TimeoutError" in out, out)
    check("udp_query trace", "NameServer.datagramReceived(" in err and "transport.write(" in err, err[:800])
    uq = Server(["udp_query", "server", "0"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    s.sendto(b"Q 7 alpha", ("127.0.0.1", uq.port))
    reply = s.recv(100)
    s.close()
    check("udp_query server answers a raw datagram", reply == b"A 7 alpha 10.0.0.1", repr(reply))
    rc, out, err = run(["udp_query", str(uq.port), "beta", "drop.it"])
    check("udp_query client against the server", rc == 0 and "client: beta -> 10.0.0.2" in out
          and "client: drop.it -> defer.TimeoutError" in out, out)
    rc, out, err = uq.stop()
    check("udp_query server stops on " + SIGINT_NAME, rc == 0 and "asks for drop.it" in out, out + err[-300:])

    # deferred_chain and blocking_db: no network.
    rc, out, err = run(["deferred_chain"])
    check("deferred_chain runs", rc == 0 and "errback" in out and "callback" in out, out)
    rc, out, err = run(["blocking_db"], timeout=30)
    check("blocking_db runs", rc == 0, out + err)
    check("blocking_db trace", "call(s) from other threads" in err and "Deferred fired" in err, err[-800:])

    # http_get against python's http.server.
    web = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="tests")
    line = web.stdout.readline().decode()
    port = re.search(r"port (\d+)", line).group(1)
    rc, out, err = run(["http_get", "http://127.0.0.1:%s/" % port])
    web.terminate()
    web.wait(timeout=10)
    check("http_get fetches a page", rc == 0 and out.startswith("HTTP 200 OK"), out[:300] + err[-300:])
    check("http_get trace", "ResponseReader.dataReceived" in err and "Deferred fired with a value" in err, err[-800:])

    print("\n%d failure(s)" % len(failures) if failures else "\nall examples ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

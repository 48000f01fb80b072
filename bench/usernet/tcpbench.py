#!/usr/bin/env python3
"""TCP connection-rate and request/response latency probe for bench/usernet.sh.

server: accepts connections on 127.0.0.1; each connection echoes every 1-byte request.
crr:    connect, 1-byte request, 1-byte answer, close; repeated for N seconds -> conn/s.
rr:     one connection, N 1-byte round trips -> p50/p99 latency in microseconds.
"""
import socket
import sys
import threading
import time


def serve(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1024)

    def handle(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                b = c.recv(1)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        finally:
            c.close()

    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def crr(host, port, seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise SystemExit("bad answer")
        s.close()
        n += 1
    print(f"{n / seconds:.0f}")


def rr(host, port, count):
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(200):  # warm-up
        s.sendall(b"x")
        s.recv(1)
    lat = []
    for _ in range(count):
        t = time.perf_counter_ns()
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise SystemExit("bad answer")
        lat.append((time.perf_counter_ns() - t) / 1000)
    lat.sort()
    print(f"{lat[len(lat) // 2]:.0f} {lat[int(len(lat) * 0.99)]:.0f}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        serve(int(sys.argv[2]))
    elif mode == "crr":
        crr(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif mode == "rr":
        rr(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

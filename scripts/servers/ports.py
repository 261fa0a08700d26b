"""Free TCP ports on 127.0.0.1 for the test servers (stdlib only).

    ports.py free N     prints N distinct free ports, one per line
    ports.py check PORT exits 0 when nothing listens on PORT and it can be bound, else 1

The free ports are taken below the kernel's ephemeral range when it leaves room there, so that
no outgoing connection can grab the port of a front while it is stopped for an outage test.
"""
import random
import socket
import sys


def free(n):
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    if lo > 12000:
        candidates = random.sample(range(10000, lo), min(400, lo - 10000))
    elif hi < 63000:
        candidates = random.sample(range(hi + 1, 65536), min(400, 65535 - hi))
    else:
        candidates = [0] * n  # no room outside the ephemeral range: let the kernel choose
    socks = []
    for port in candidates:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        socks.append(s)
        if len(socks) == n:
            break
    if len(socks) < n:
        sys.exit("no free ports on 127.0.0.1")
    for s in socks:
        print(s.getsockname()[1])
        s.close()


def check(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        sys.exit(1)


if len(sys.argv) == 3 and sys.argv[1] == "free":
    free(int(sys.argv[2]))
elif len(sys.argv) == 3 and sys.argv[1] == "check":
    check(int(sys.argv[2]))
else:
    sys.exit(__doc__)

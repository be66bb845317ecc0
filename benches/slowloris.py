# /healthz latency while N connections hold half-sent request heads (slowloris), against a running
# voxgate at 127.0.0.1:PORT. Usage: python3 slowloris.py PORT SLOW REQUESTS
import socket, sys, time, resource
port, slow_n, requests = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (slow_n + 1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
def healthz_times(n):
    out = []
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        buf = b""
        while not buf.endswith(b'{"status":"ok"}'):
            chunk = s.recv(4096)
            if not chunk: raise SystemExit("connection closed")
            buf += chunk
        out.append((time.perf_counter() - t) * 1e6)
    s.close()
    out.sort()
    return {p: round(out[int(len(out) * p / 100) - 1]) for p in (50, 99)} | {"max": round(out[-1])}
print("no slow heads:", healthz_times(requests), "us")
slow = []
t = time.perf_counter()
for _ in range(slow_n):
    c = socket.create_connection(("127.0.0.1", port)); c.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
    slow.append(c)
    if len(slow) % 100 == 0:
        time.sleep(0.01)  # a burst over the listen backlog (1024) costs 1 s SYN retries
print(f"{slow_n} slow heads open in {time.perf_counter() - t:.2f} s")
print(f"with {slow_n} slow heads:", healthz_times(requests), "us")
time.sleep(11)
closed = 0
for c in slow:
    c.setblocking(False)
    try:
        closed += c.recv(1) == b""
    except (BlockingIOError, ConnectionResetError) as e:
        closed += isinstance(e, ConnectionResetError)
print(f"after 11 s: {closed} of {slow_n} slow heads closed by the server")

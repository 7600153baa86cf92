#!/usr/bin/env python3
# Measures how long `settled serve` takes from exec to READY=1 on a fresh embedded database, and its
# resident memory after 10 s idle. Usage: scripts/measure-idle.py target/release/settled
import os, socket, subprocess, time, sys, tempfile, statistics
binary = sys.argv[1]
starts = []
rss = []
for run in range(5):
    d = tempfile.mkdtemp()
    sock_path = os.path.join(d, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(10)
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": sock_path,
           "SETTLED__DAEMON__STATE_DIR": os.path.join(d, "state"), "SETTLED__SERVER__LISTEN": "127.0.0.1:0",
           "SETTLED__LOG__FORMAT": "json"}
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        msg = s.recv(4096).decode()
        if "READY=1" in msg.splitlines():
            break
    starts.append((time.monotonic() - t0) * 1000)
    time.sleep(10)
    with open(f"/proc/{p.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                rss.append(int(line.split()[1]) / 1024)
    p.terminate(); p.wait()
print(f"start to READY=1: median {statistics.median(starts):.0f} ms (runs: {', '.join(f'{x:.0f}' for x in starts)})")
print(f"idle RSS after 10 s: median {statistics.median(rss):.1f} MiB (runs: {', '.join(f'{x:.1f}' for x in rss)})")

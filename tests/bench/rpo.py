#!/usr/bin/env python3
"""rpo.py: the real-time daemon's recovery point objective, measured end to end.

    rpo.py [options] SCRATCH

Starts `keepsake-server serve` (embedded PostgreSQL, local storage) on a loopback port with its
data in SCRATCH/srv, enrols agents (one organisation each, so nothing dedups across the runs)
and measures:

1. single: one photo-sized file at a time (--single N files of --size-mb) written into a folder
   watched by `keepsake run`; for each, the time from the file's close to the server's commit of
   the recovery point that first holds it.
2. burst: --files files of --size-mb written back to back (at --rate-mbs MB/s, 0 = as fast as the
   disk takes them) into the watched folder; per file close-to-commit p50/p95/max, and the time
   from the first byte written to the last commit, compared with a one-shot `keepsake backup` of
   the same folder by another organisation (same bytes, no dedup).
3. idle: a daemon watching --idle-tree (e.g. `gen-shoot smallfiles --count 100000`) after its
   initial backup: CPU use over --idle-seconds and RSS.

Commit times come from the server (`keepsake points --json`, `keepsake ls --point P --json`);
close times from this script's clock on the same machine. Output: SCRATCH/rpo.json and a summary
on stdout. As root the embedded cluster runs as `postgres`, so SCRATCH must be traversable by it
(not under /root).
"""

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

PASSPHRASE = "keepsake-bench-throwaway-passphrase"


def now():
    return time.time()


def parse_time(s):
    """RFC 3339 with up to nanoseconds (Python's parser takes at most microseconds)."""
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        raise ValueError(f"not a timestamp: {s}")
    base, frac, tz = m.groups()
    t = dt.datetime.fromisoformat(base + ("+00:00" if tz == "Z" else tz)).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(values, p):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def proc_cpu_s(pid):
    """utime + stime of pid (seconds)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_mem_mb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return None


class Bench:
    def __init__(self, args):
        self.args = args
        self.bin = args.ks_bin
        self.scratch = os.path.abspath(args.scratch)
        self.srv_dir = os.path.join(self.scratch, "srv")
        self.logs = os.path.join(self.scratch, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.passfile = os.path.join(self.scratch, "passphrase")
        with open(self.passfile, "w") as f:
            f.write(PASSPHRASE + "\n")
        self.server = None
        self.url = None

    def log(self, msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def start_server(self):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = open(os.path.join(self.logs, "server.log"), "w")
        self.server = subprocess.Popen(
            [f"{self.bin}/keepsake-server", "serve", "--bind", f"127.0.0.1:{port}",
             "--data-dir", self.srv_dir],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = now() + 120
        while now() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            if self.server.poll() is not None:
                sys.exit("keepsake-server exited; see " + log.name)
            time.sleep(0.2)
        sys.exit("keepsake-server not ready within 120 s")

    def stop_server(self):
        if self.server and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=60)

    def agent(self, name):
        """A new organisation and an agent home enrolled in it."""
        out = subprocess.run(
            [f"{self.bin}/keepsake-server", "admin", "create-org", f"RPO {name}", "--json",
             "--data-dir", self.srv_dir], check=True, capture_output=True, text=True).stdout
        token = json.loads(out)["enroll_token"]
        home = os.path.join(self.scratch, f"home-{name}")
        subprocess.run(
            [f"{self.bin}/keepsake", "--home", home, "enroll", "--server", self.url,
             "--token", token, "--name", name, "--passphrase-file", self.passfile, "--json"],
            check=True, capture_output=True)
        return home

    def ks(self, home, *args):
        out = subprocess.run([f"{self.bin}/keepsake", "--home", home, *args],
                             check=True, capture_output=True, text=True).stdout
        return out

    def start_daemon(self, home, paths, name):
        log = os.path.join(self.logs, f"daemon-{name}.log")
        p = subprocess.Popen(
            [f"{self.bin}/keepsake", "--home", home, "run", *paths,
             "--settle", str(self.args.settle), "--log-file", log],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return p

    def status(self, home):
        try:
            with open(os.path.join(home, "status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def wait_idle(self, home, daemon, limit, min_seq=None):
        """Until the daemon reports idle with nothing waiting (and, if given, a commit >= min_seq)."""
        deadline = now() + limit
        while now() < deadline:
            if daemon.poll() is not None:
                sys.exit("the daemon exited; see the logs in " + self.logs)
            st = self.status(home)
            if st and st["state"] == "idle" and all(s["pending_files"] == 0 for s in st["sources"]):
                if min_seq is None or any((s.get("last_seq") or 0) >= min_seq for s in st["sources"]):
                    return st
            time.sleep(0.05)
        sys.exit(f"the daemon did not settle within {limit} s")

    def wait_safe(self, home, daemon, folder, limit):
        """Until `keepsake status --path folder` says every file in it is committed."""
        deadline = now() + limit
        while now() < deadline:
            if daemon.poll() is not None:
                sys.exit("the daemon exited; see the logs in " + self.logs)
            r = subprocess.run([f"{self.bin}/keepsake", "--home", home, "status", "--path", folder, "--json"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        sys.exit(f"{folder} not safe within {limit} s")

    def first_commit_times(self, home):
        """path -> commit time (epoch seconds) of the first recovery point holding it."""
        points = json.loads(self.ks(home, "points", "--json"))
        for p in points:
            p["t"] = parse_time(p["point_in_time"])
        points.sort(key=lambda p: p["t"])
        seen = {}
        for p in points:
            t = p["t"]
            out = self.ks(home, "ls", "--point", p["id"], "--json")
            for line in out.splitlines():
                if not line.strip():
                    continue
                f = json.loads(line)
                seen.setdefault(f["path"], t)
        return seen

    def write_file(self, path, size, rate):
        """Writes `size` random bytes (1 MiB pieces), at `rate` MB/s if > 0; returns close time."""
        piece = 1 << 20
        start = now()
        written = 0
        with open(path, "wb") as f:
            while written < size:
                n = min(piece, size - written)
                f.write(os.urandom(n))
                written += n
                if rate > 0:
                    ahead = written / (rate * 1e6) - (now() - start)
                    if ahead > 0:
                        time.sleep(ahead)
        return now()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scratch")
    ap.add_argument("--ks-bin", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/release"))
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size-mb", type=float, default=25)
    ap.add_argument("--single", type=int, default=10)
    ap.add_argument("--settle", type=int, default=3)
    ap.add_argument("--rate-mbs", type=float, default=0)
    ap.add_argument("--idle-tree")
    ap.add_argument("--idle-seconds", type=int, default=60)
    ap.add_argument("--skip", default="", help="comma-separated: single,burst,oneshot,idle")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.ks_bin = os.path.abspath(args.ks_bin)
    b = Bench(args)
    size = int(args.size_mb * 1e6)
    results = {"settle_s": args.settle, "size_mb": args.size_mb, "files": args.files,
               "rate_mbs": args.rate_mbs, "cpus": os.cpu_count()}
    out_path = os.path.join(b.scratch, "rpo.json")

    def save():
        with open(out_path, "w") as f:
            json.dump(results, f, indent=2, default=str)

    b.start_server()
    try:
        home = b.agent("daemon")
        single_dir = os.path.join(b.scratch, "single")
        burst_dir = os.path.join(b.scratch, "burst")
        for d in (single_dir, burst_dir):
            os.makedirs(d, exist_ok=True)
        daemon = b.start_daemon(home, [single_dir, burst_dir], "daemon")
        b.wait_idle(home, daemon, 60)
        time.sleep(1)

        if "single" not in skip:
            closes = {}
            for i in range(args.single):
                b.log(f"single file {i + 1}/{args.single}")
                rel = f"IMG_S{i:03}.CR3"
                closes[rel] = b.write_file(os.path.join(single_dir, rel), size, 0)
                b.wait_safe(home, daemon, single_dir, 120)
                time.sleep(0.5)
            commits = b.first_commit_times(home)
            lat = [commits[r] - c for r, c in closes.items() if r in commits]
            missing = [r for r in closes if r not in commits]
            results["single"] = {"n": len(lat), "missing": missing, "p50_s": pct(lat, 50),
                                 "p95_s": pct(lat, 95), "max_s": max(lat) if lat else None,
                                 "target_s": args.settle + 2}
            save()

        if "burst" not in skip:
            b.log(f"burst: {args.files} x {args.size_mb} MB")
            cpu0 = proc_cpu_s(daemon.pid)
            t0 = now()
            closes = {}
            for i in range(args.files):
                rel = f"IMG_B{i:04}.CR3"
                closes[rel] = b.write_file(os.path.join(burst_dir, rel), size, args.rate_mbs)
            t_written = now()
            b.log(f"burst written in {t_written - t0:.1f} s; waiting for the daemon")
            b.wait_safe(home, daemon, burst_dir, 1800)
            cpu1 = proc_cpu_s(daemon.pid)
            commits = b.first_commit_times(home)
            lat = [commits[r] - c for r, c in closes.items() if r in commits]
            missing = [r for r in closes if r not in commits]
            last_commit = max(commits[r] for r in closes if r in commits)
            results["burst"] = {
                "n": len(lat), "missing": missing, "bytes": size * args.files,
                "write_s": t_written - t0, "first_byte_to_last_commit_s": last_commit - t0,
                "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "max_s": max(lat),
                "daemon_cpu_s": cpu1 - cpu0, "daemon_peak_rss_mb": proc_mem_mb(daemon.pid, "VmHWM"),
                "server_peak_rss_mb": proc_mem_mb(b.server.pid, "VmHWM"),
            }
            save()
        daemon.terminate()
        daemon.wait(timeout=60)

        if "oneshot" not in skip and "burst" in results:
            b.log("one-shot keepsake backup of the same files (another organisation)")
            other = b.agent("oneshot")
            t0 = now()
            out = json.loads(b.ks(other, "backup", burst_dir, "--json"))
            results["oneshot"] = {"wall_s": now() - t0, "summary": out}
            results["burst"]["ratio_to_oneshot"] = (
                results["burst"]["first_byte_to_last_commit_s"] / results["oneshot"]["wall_s"])
            results["burst"]["ratio_after_write"] = (
                (results["burst"]["first_byte_to_last_commit_s"]) /
                (results["burst"]["write_s"] + results["oneshot"]["wall_s"]))

        if "idle" not in skip and args.idle_tree:
            b.log(f"idle: daemon on {args.idle_tree}")
            idle_home = b.agent("idle")
            d = b.start_daemon(idle_home, [os.path.abspath(args.idle_tree)], "idle")
            t0 = now()
            b.wait_idle(idle_home, d, 1800, min_seq=1)
            initial = now() - t0
            time.sleep(5)
            c0, w0 = proc_cpu_s(d.pid), now()
            time.sleep(args.idle_seconds)
            c1, w1 = proc_cpu_s(d.pid), now()
            results["idle"] = {
                "files": sum(len(fs) for _, _, fs in os.walk(args.idle_tree)),
                "initial_backup_s": initial, "seconds": w1 - w0,
                "cpu_percent_of_core": 100.0 * (c1 - c0) / (w1 - w0),
                "rss_mb": proc_mem_mb(d.pid, "VmRSS"), "peak_rss_mb": proc_mem_mb(d.pid, "VmHWM"),
            }
            d.terminate()
            d.wait(timeout=60)
    finally:
        b.stop_server()
        save()
    summary = {k: v for k, v in results.items() if k != "oneshot"}
    if "oneshot" in results:
        summary["oneshot_wall_s"] = results["oneshot"]["wall_s"]
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()

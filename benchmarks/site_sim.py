"""A site simulation on loopback: one Mosquitto (TLS, passwords, ACL), one hub, 50 door clients.

    python -m edgeface.benchmarks.site_sim --doors 50 --people 10000 --rate 500 --seconds 20

Measures (1) the time from the hub connecting until a gallery of ``--people`` persons (one embedder space,
one embedding each, signed retained records) is applied on every door, (2) a sustained event rate: every door
logs events at ``rate / doors`` per second for ``--seconds`` through its real outbox (same transaction as the
event log, QoS 1, delete on PUBACK), and the hub must end with every one of them exactly once, and (3) the
CPU (% of one core) and peak RSS of the hub and the broker in each phase, and of the door processes.

The door clients are the real door-side code (``SiteLink``: gallery sync with signature checks, outbox,
presence), several per process (``--procs``) because 50 Python processes do not fit in 2 cores; their SQLite
files live on tmpfs (/dev/shm), since 50 doors sharing one disk would measure that disk's fsync queue, not
the protocol (a real door has its own SD card: see ``--door-disk`` for one door's apply rate on disk). The
embeddings are random unit vectors: the transport does not care what the numbers are.
Writes ``site_sim.json``, ``site_sim.md`` and ``site_sim.png`` to ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SPACE, DIM = "bench-space", 128


def _proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return float("nan"), float("nan")


class Sampler(threading.Thread):
    """Samples CPU seconds and RSS of named pids every 0.5 s; :meth:`phase` marks phase boundaries."""

    def __init__(self, pids: dict):
        super().__init__(daemon=True)
        self.pids, self.samples, self.marks = pids, [], []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), {n: _proc_stat(p) for n, p in self.pids.items()}))
            self.stop.wait(0.5)

    def phase(self, name: str):
        self.marks.append((name, time.monotonic(), {n: _proc_stat(p) for n, p in self.pids.items()}))

    def summary(self) -> dict:
        out = {}
        for (name, t0, s0), (_, t1, s1) in zip(self.marks, self.marks[1:]):
            row = {}
            for n in self.pids:
                rss = [s[n][1] for t, s in self.samples if t0 <= t <= t1 and s.get(n)]
                row[n] = {"cpu_percent_of_one_core": round(100 * (s1[n][0] - s0[n][0]) / max(t1 - t0, 1e-9), 1),
                          "peak_rss_mb": round(max(rss, default=s1[n][1]), 1)}
            out[name] = {"seconds": round(t1 - t0, 2), **row}
        return out


# ------------------------------------------------------------------------------------------------ roles
def run_hub(args) -> None:
    """The hub process: a real Hub (no recognizers needed), its store prefilled with random people."""
    from edgeface.device.site.hub.service import Hub, load_config

    cfg = load_config(Path(args.site) / "hub" / "hub.json")
    cfg["database"] = str(Path(args.work) / "hub.db")
    hub = Hub(cfg, [])
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(args.people, DIM)).astype(np.float32)
    for i in range(args.people):
        hub.store.enroll(f"person {i:05d}", {SPACE: vecs[i:i + 1]})
    ready = Path(args.work) / "hub-ready.json"
    orig = hub.publish_all

    def publish_all():
        t = time.time()
        n = orig()
        ready.write_text(json.dumps({"connected": t, "published": time.time(), "records": n}))
        return n

    hub.publish_all = publish_all
    hub.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    hub.close()


def run_doors(args) -> None:
    """Door clients (real SiteLink objects), then events at the given rate once ``go-events`` appears."""
    from edgeface import Gallery
    from edgeface.device.config import DeviceConfig
    from edgeface.device.events import EventLog
    from edgeface.device.site.link import SiteLink

    site, work = Path(args.site), Path(args.work)
    links = {}
    for door in args.door_ids.split(","):
        d = site / "doors" / door
        cfg = DeviceConfig().replace(site={
            "enabled": True, "site": "bench", "door_id": door, "host": "127.0.0.1", "port": args.port,
            "password_file": str(d / "password"), "ca_file": str(d / "ca.crt"),
            "hub_public_key": str(d / "hub_public_key.pem")}).site
        g = work / f"{door}-gallery.db"
        Gallery(g, SPACE, DIM).close()
        events = EventLog(work / f"{door}-events.db", retention_days=0, max_events=10**9)
        links[door] = (SiteLink(cfg, str(g), events, None, {"embedder": SPACE}, 0.5, SPACE).start(), events)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    go = work / "go-events"
    while not go.exists() and not stop.wait(0.2):
        pass
    emitted = {}

    def emit(door, events):
        period, n = 1.0 / args.rate_per_door, int(args.rate_per_door * args.seconds)
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            events.log("bench", decision="unknown", detail=f"{door} {i}")
        emitted[door] = n

    threads = [threading.Thread(target=emit, args=(d, ev)) for d, (_, ev) in links.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drained = all(link.publisher.flush(120) for link, _ in links.values())
    (work / f"doors-{os.getpid()}.json").write_text(json.dumps({"emitted": emitted, "drained": drained}))
    while not stop.wait(0.2):
        pass
    for link, events in links.values():
        link.close()
        events.close()


# ------------------------------------------------------------------------------------------------ main
def door_disk_rate(n: int = 300) -> dict:
    """One door applying ``n`` signed records on the real disk (fsync per commit) vs tmpfs."""
    from edgeface import Gallery
    from edgeface.device.site.link import BURST
    from edgeface.device.site.records import (
        encode_vectors,
        generate_key,
        load_public_key,
        load_signing_key,
        open_signed,
        person_record,
        sign,
    )
    from edgeface.device.site.sync import GallerySync

    out = {}
    keys = tempfile.mkdtemp()
    generate_key(keys)
    key, pub = load_signing_key(f"{keys}/hub_signing_key.pem"), load_public_key(f"{keys}/hub_public_key.pem")
    rng = np.random.default_rng(1)
    payloads = [sign({"type": "person", "site": "bench", "id": f"p{i}", "name": f"p {i}", "version": i + 1,
                      "deleted": False, "embeddings": {SPACE: encode_vectors(rng.normal(size=(1, DIM)))}}, key)
                for i in range(n)]
    t = time.perf_counter()
    for p in payloads:
        open_signed(p, pub)
    out["verify_us_per_record"] = round(1e6 * (time.perf_counter() - t) / n, 1)
    for name, where in (("tmpfs", "/dev/shm"), ("disk", tempfile.gettempdir())):
        d = tempfile.mkdtemp(dir=where)
        with Gallery(f"{d}/g.db", SPACE, DIM) as g:
            s = GallerySync(g)
            t = time.perf_counter()
            for i in range(0, n, BURST):  # as the door's sync worker: verify each, apply a burst at once
                s.apply_many([person_record(open_signed(p, pub)) for p in payloads[i:i + BURST]])
            out[f"apply_ms_per_record_{name}"] = round(1e3 * (time.perf_counter() - t) / n, 3)
            s.close()
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(keys, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeface.benchmarks.site_sim", description=__doc__.split("\n")[0],
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doors", type=int, default=50, help="door clients (default 50)")
    p.add_argument("--people", type=int, default=10_000, help="gallery size (default 10,000; 0: events only)")
    p.add_argument("--rate", type=float, default=500.0, help="total events per second over all doors")
    p.add_argument("--seconds", type=float, default=20.0, help="how long the doors send events")
    p.add_argument("--procs", type=int, default=4, help="door processes (the doors are spread over them)")
    p.add_argument("--sync-timeout", type=float, default=900.0, help="give up waiting for the gallery after this")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--role", choices=("main", "hub", "doors"), default="main", help=argparse.SUPPRESS)
    p.add_argument("--site", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--door-ids", help=argparse.SUPPRESS)
    p.add_argument("--rate-per-door", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "hub":
        run_hub(args)
        return 0
    if args.role == "doors":
        run_doors(args)
        return 0
    return run_main(args)


def run_main(args) -> int:
    from edgeface.device.site import door_topic
    from edgeface.device.site.broker import BrokerProcess, free_port, make_site
    from edgeface.device.site.mqtt import BrokerSettings, make_client, start, stop

    from .common import header, machine_info, md_table, pyplot, write_outputs

    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="edgeface-site-sim-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    doors = [f"d{i:03d}" for i in range(args.doors)]
    port = free_port()
    print(f"site of {args.doors} doors in {work}", flush=True)
    paths = make_site(work / "site", "bench", doors, port=port, extra_hosts=["localhost"], run_as=getpass.getuser())
    broker = BrokerProcess(paths.broker / "mosquitto.conf", port).start()
    procs, result = [], {"config": vars(args) | {"work": str(work)}, "machine": info,
                         "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    states: dict = {}
    lock = threading.Lock()

    def on_message(topic, payload):
        if payload:
            s = json.loads(payload)
            with lock:
                states[topic.split("/")[-2]] = (time.time(), s)

    obs, obs_state = make_client(BrokerSettings("127.0.0.1", port, "hub", paths.passwords["hub"],
                                                str(paths.broker / "ca.crt"), "bench-observer"), "observer",
                                 on_connect=lambda c: c.subscribe(door_topic("bench", "+", "state"), qos=1),
                                 on_message=on_message)
    start(obs)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    common = ["--site", str(paths.root), "--work", str(work), "--port", str(port)]
    sampler = None
    try:
        per = [doors[i::args.procs] for i in range(args.procs)]
        for group in per:
            procs.append(subprocess.Popen([sys.executable, "-m", "edgeface.benchmarks.site_sim", "--role", "doors",
                                           "--door-ids", ",".join(group), "--rate-per-door",
                                           str(args.rate / args.doors), "--seconds", str(args.seconds), *common],
                                          env=env))
        t = time.monotonic()
        while time.monotonic() - t < 120:
            with lock:
                online = sum(1 for _, s in states.values() if s.get("state") == "online")
            if online == args.doors:
                break
            time.sleep(0.5)
        print(f"{online} doors online after {time.monotonic() - t:.1f} s", flush=True)
        hub = subprocess.Popen([sys.executable, "-m", "edgeface.benchmarks.site_sim", "--role", "hub", "--people",
                                str(args.people), *common], env=env)
        procs.append(hub)
        pids = {"broker": broker.proc.pid, "hub": hub.pid}
        pids.update({f"doors{i}": pr.pid for i, pr in enumerate(procs[:-1])})
        sampler = Sampler(pids)
        sampler.start()
        ready = work / "hub-ready.json"
        while not ready.exists():  # the hub fills its store, connects and publishes everything
            time.sleep(0.1)
            if hub.poll() is not None:
                raise RuntimeError("the hub process ended")
        hubinfo = json.loads(ready.read_text())
        t0 = hubinfo["connected"]
        sampler.phase("gallery sync")
        print(f"hub connected; {hubinfo['records']} records published in {hubinfo['published'] - t0:.1f} s",
              flush=True)
        done_at: dict = {}
        progress = []
        while time.time() - t0 < args.sync_timeout:
            with lock:
                for d, (ts, s) in states.items():
                    if d not in done_at and s.get("gallery_version", 0) >= args.people:
                        done_at[d] = ts
                versions = [s.get("gallery_version", 0) for _, s in states.values()]
            progress.append((time.time() - t0, float(np.mean(versions)) / max(args.people, 1), len(done_at)))
            if len(done_at) == args.doors:
                break
            time.sleep(0.5)
        sampler.phase("events")
        sync = {"records": hubinfo["records"], "publish_seconds": round(hubinfo["published"] - t0, 2),
                "doors_complete": len(done_at),
                "all_doors_seconds": round(max(done_at.values()) - t0, 2) if len(done_at) == args.doors else None,
                "median_door_seconds": round(float(np.median([v - t0 for v in done_at.values()])), 2)
                if done_at else None, "progress": progress}
        print(f"gallery sync: {sync['doors_complete']}/{args.doors} doors complete, all in "
              f"{sync['all_doors_seconds']} s", flush=True)
        # events
        (work / "go-events").touch()
        t_ev = time.time()
        results = []
        while len(results) < args.procs and time.time() - t_ev < args.seconds + 180:
            results = [json.loads(f.read_text()) for f in work.glob("doors-*.json")]
            time.sleep(0.5)
        emitted = sum(sum(r["emitted"].values()) for r in results)
        import sqlite3

        def hub_rows():
            c = sqlite3.connect(f"file:{work / 'hub.db'}?mode=ro", uri=True, timeout=30)
            try:
                return c.execute("SELECT received FROM events WHERE kind = 'bench'").fetchall(), c.execute(
                    "SELECT COUNT(*), COUNT(DISTINCT detail) FROM events WHERE kind = 'bench'").fetchone()
            finally:
                c.close()

        t_wait = time.time()
        while time.time() - t_wait < 120:
            rows, (n, distinct) = hub_rows()
            if n >= emitted:
                break
            time.sleep(0.5)
        sampler.phase("end")
        rec = np.sort(np.array([r[0] for r in rows])) if rows else np.zeros(0)
        span = float(rec[-1] - rec[0]) if rec.size > 1 else float("nan")
        events = {"emitted": emitted, "at_hub": n, "distinct_at_hub": distinct, "lost": emitted - distinct,
                  "duplicates_stored": n - distinct, "outboxes_drained": all(r["drained"] for r in results),
                  "offered_rate": args.rate,
                  "hub_rate_per_s": round(n / span, 1) if span == span and span > 0 else None,
                  "seconds_to_last_event_after_emission": round(float(rec[-1]) - t_ev - args.seconds, 2)
                  if rec.size else None,
                  "per_second": np.bincount((rec - rec[0]).astype(int)).tolist() if rec.size else []}
        print(f"events: {emitted} sent, {distinct} distinct at the hub ({events['lost']} lost), "
              f"{events['hub_rate_per_s']} /s", flush=True)
        result.update(sync=sync, events=events, resources=sampler.summary(), door_apply=door_disk_rate(),
                      load_average_at_end=[round(x, 2) for x in os.getloadavg()])
    finally:
        if sampler is not None:
            sampler.stop.set()
        for pr in procs:
            pr.send_signal(signal.SIGTERM)
        for pr in procs:
            try:
                pr.wait(30)
            except subprocess.TimeoutExpired:
                pr.kill()
        stop(obs)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    goal_sync = args.people == 0 or (sync["all_doors_seconds"] is not None and sync["all_doors_seconds"] <= 30)
    # the hub keeps up when it stores (nearly) the offered rate with nothing lost; the goal is >= 500/s offered
    goal_ev = events["lost"] == 0 and args.rate >= 500 and (events["hub_rate_per_s"] or 0) >= 0.95 * args.rate
    result["goals"] = {"gallery_on_all_doors_within_30_s": goal_sync, "500_events_per_s_no_loss": goal_ev}
    res = result["resources"]
    md = [header(f"Site simulation: {args.doors} doors on loopback", info,
                 f"\n{args.doors} door clients in {args.procs} processes, {args.people:,} people (one embedder "
                 f"space), offered {args.rate:g} events/s for {args.seconds:g} s. Door SQLite on tmpfs. Load "
                 f"average (1, 5, 15 min) at start {result['load_average_at_start']}, at end "
                 f"{result.get('load_average_at_end')}: the 2 cores are shared."),
          md_table(["measure", "value", "goal"], [
              ["records published by the hub (s)", sync["publish_seconds"], ""],
              ["gallery on every door (s)", sync["all_doors_seconds"] or f"not all in {args.sync_timeout:g} s "
               f"({sync['doors_complete']} doors)", "<= 30"],
              ["median door complete (s)", sync["median_door_seconds"], ""],
              ["events sent / distinct at hub / lost", f"{emitted} / {distinct} / {events['lost']}", "0 lost"],
              ["hub event rate (/s), offered " + f"{args.rate:g}", events["hub_rate_per_s"], ">= 500, none lost"],
              ["one door: verify a record (µs)", result["door_apply"]["verify_us_per_record"], ""],
              ["one door: apply a record (bursts of 500), tmpfs / disk (ms)",
               f"{result['door_apply']['apply_ms_per_record_tmpfs']} / "
               f"{result['door_apply']['apply_ms_per_record_disk']}",
               ""]]),
          "",
          md_table(["phase", "seconds", "broker CPU % / RSS MB", "hub CPU % / RSS MB", "door processes CPU % (sum)"],
                   [[ph, v["seconds"], f"{v['broker']['cpu_percent_of_one_core']} / {v['broker']['peak_rss_mb']}",
                     f"{v['hub']['cpu_percent_of_one_core']} / {v['hub']['peak_rss_mb']}",
                     round(sum(v[k]["cpu_percent_of_one_core"] for k in v if k.startswith("doors")), 1)]
                    for ph, v in res.items()])]
    paths_out = write_outputs(Path(args.out), "site_sim", result, "\n".join(md))
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    if sync["progress"]:
        t, frac, ndone = zip(*sync["progress"])
        ax[0].plot(t, [100 * f for f in frac], label="mean gallery on doors (%)")
        ax[0].plot(t, [100 * d / args.doors for d in ndone], label="doors complete (%)")
        ax[0].axvline(30, ls="--", c="grey", label="goal 30 s")
        ax[0].set_xlabel("seconds since the hub connected")
        ax[0].legend()
        ax[0].set_title(f"{args.people:,} people to {args.doors} doors")
    ax[1].plot(events["per_second"], label="events stored by the hub per second")
    ax[1].axhline(500, ls="--", c="grey", label="goal 500/s")
    ax[1].set_xlabel("seconds")
    ax[1].legend()
    ax[1].set_title(f"events: {emitted} sent, {events['lost']} lost")
    fig.tight_layout()
    fig.savefig(Path(args.out) / "site_sim.png", dpi=80)
    print("\n".join(md))
    print(f"wrote {paths_out['json']}, {paths_out['md']}, {Path(args.out) / 'site_sim.png'}")
    return 0 if goal_sync and goal_ev else 1


if __name__ == "__main__":
    sys.exit(main())

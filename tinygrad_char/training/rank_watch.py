"""The rank watcher of an MPI job: one line naming a rank that dies.

When a rank is killed (SIGKILL, the out-of-memory killer, a crash), the MPI launcher ends
every other rank at once, with SIGKILL too, so no rank lives to say which one died, and
the launcher's own report names a process id. The watcher is a small process outside the
job that outlives it:

    rank 0 starts it (this file, run as a script, in a session of its own so that the
    launcher's clean-up does not reach it) and sends its port to every rank;
    every rank connects over TCP, says "hello <rank> <pid> <host>", and keeps the
    connection open for as long as it runs;
    a rank that leaves on purpose says "done" first (at exit), or "abort" when it ends the
    job itself after printing its own error line (then the watcher keeps quiet);
    rank 0 says "saved <checkpoint path>" after each save, and every rank says "wait <k>"
    as it enters its k-th blocking collective (the gradient all-reduce of a step, an
    evaluation's sums: every rank enters the same ones in the same order).

The kernel closes a dead process's sockets as it dies, so a connection that closes without
"done" or "abort" is a rank that died, and the first to close is the one to name: the
ranks the launcher kills afterwards close later (their kill goes through the launcher).
The watcher prints, on the job's standard error,

    error: rank 1 of 2 (pid 4242 on node7) died without a word (killed by a signal:
    SIGKILL, the out-of-memory killer or a crash); the job stops; resume from the last
    save with --resume runs/x/ckpt.safetensors

(one line), then exits; the launcher's own banner follows it and ends the job.

A rank that hangs rather than dies (stuck, or stopped) keeps its connection open, and the
others wait for it in the next collective forever (MPI collectives have no timeout). With
HANG_SECONDS (default 600, TINYGRAD_CHAR_HANG_SECONDS; 0 turns this off) the watcher names
a rank that hangs in one line and ends the job by killing rank 0 (waiting, so not inside
a save; or the stuck one, and a save cut short still leaves a pair on disk that resumes:
checkpoint.py), after which the launcher ends the others, when either
    every other rank has waited in its k-th collective that long and this one has not
    entered it (stuck outside MPI: a loop, a deadlock), or
    this one has not been heard from that long: each rank's daemon thread says "beat"
    every HANG_SECONDS / 4 (at most 10 s), which it still does while waiting inside MPI
    (mpi4py lets go of the GIL there) and not once stopped or frozen (stuck inside a
    collective, where counting cannot tell it from the ranks waiting for it).

Not here: nodes that cannot open TCP connections to rank 0's (the ranks then run
unwatched, and rank 0 says so at start).

The watcher side runs with the standard library only: it must not import the package,
NumPy or MPI (it starts in ~50 ms and holds no GPU).
"""

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

START_TIMEOUT = 30.0  # seconds for the watcher to start and every rank to connect
CONNECT_TIMEOUT = 5.0  # seconds for one rank's connection (a firewall dropping it: unwatched)
HANG_SECONDS = 600.0  # default: how long every other rank waits for one before it is named
_conn = None  # this rank's connection to the watcher (None: not watched)
_lock = threading.Lock()  # the connection is written by the rank and its heartbeat thread
_set_up = False  # whether this process has been through set_up_once (one watcher per job)


def set_up_once():
    """True the first time a process calls it: a process that makes a second MPIWorld (a
    library user calling train() twice) keeps its first watcher and connection. Every rank
    calls it at the same points, so the ranks agree."""
    global _set_up
    first, _set_up = not _set_up, True
    return first


def hang_seconds():
    """TINYGRAD_CHAR_HANG_SECONDS (a number >= 0; 0: hangs are not watched), or the default.
    Raises ValueError naming the variable when it is set to anything else."""
    text = os.environ.get("TINYGRAD_CHAR_HANG_SECONDS")
    if text is None:
        return HANG_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"TINYGRAD_CHAR_HANG_SECONDS={text!r} is not a number of seconds "
                         ">= 0: set it to e.g. 600, or 0 to stop watching for a rank that hangs")
    return value


# -- the rank side ---------------------------------------------------------------------------

def start(world_size, hang):
    """On rank 0: start the watcher (hang: hang_seconds()); returns (process, port), or
    (None, reason)."""
    try:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(world_size),
                                 str(hang)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
    except OSError as e:
        return None, f"could not start it ({e})"
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout=START_TIMEOUT)
    sel.close()
    line = proc.stdout.readline().decode(errors="replace").split() if ready else []
    proc.stdout.close()
    if len(line) != 2 or line[0] != "port":
        proc.kill()
        return None, "it did not start listening"
    return proc, int(line[1])


def connect(host, port, rank, pid, my_host, hang=0.0):
    """Connect this rank to the watcher at (host, port); with hang > 0 a daemon thread then
    says "beat" every hang / 4 s (at most 10 s), which a rank waiting inside MPI still does
    (mpi4py releases the GIL there) and a stopped or frozen one does not. Returns None or
    why the rank is not watched."""
    global _conn
    try:
        _conn = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        _conn.settimeout(None)
        _conn.sendall(f"hello {rank} {pid} {my_host}\n".encode())
    except OSError as e:
        _conn = None
        return f"rank {rank} could not reach it at {host}:{port} ({e})"
    if hang > 0:
        threading.Thread(target=_beat, args=(min(hang / 4, 10.0),), daemon=True,
                         name="rank-watch-heartbeat").start()
    return None


def _beat(interval):
    while True:
        time.sleep(interval)
        with _lock:
            if _conn is None:
                return
            try:
                _conn.sendall(b"beat\n")
            except OSError:
                return


def say(message):
    """Send one line to the watcher ("done", "abort", "saved <path>"); a no-op when this
    rank is not watched. "done" and "abort" close the connection."""
    global _conn
    with _lock:
        if _conn is None:
            return
        try:
            _conn.sendall((message + "\n").encode())
        except OSError:
            pass
        if message in ("done", "abort"):
            try:
                _conn.close()
            finally:
                _conn = None


# -- the watcher side --------------------------------------------------------------------------

class _Rank:
    def __init__(self):
        self.buffer, self.name, self.ended = b"", None, False
        self.rank, self.pid = None, None
        self.waits, self.since = 0, time.monotonic()  # collectives entered; since when
        self.heard = time.monotonic()  # when it last said anything (a heartbeat at least)


def _hung(ranks, world_size, hang):
    """(rank, what it did not do) for a rank that hangs, or None: one every other rank has
    waited for in a collective for longer than `hang` seconds, or one not heard from (no
    heartbeat) for that long."""
    if hang <= 0 or len(ranks) < world_size:
        return None
    latest = max(r.waits for r in ranks)
    behind = [r for r in ranks if r.waits < latest]
    now = time.monotonic()
    if behind and all(now - r.since > hang for r in ranks if r.waits == latest):
        return (min(behind, key=lambda r: r.waits),
                f"has not joined the collective every other rank has waited in for {hang:g} s")
    silent = [r for r in ranks if now - r.heard > hang]
    if silent:
        return min(silent, key=lambda r: r.heard), f"has not been heard from for {hang:g} s"
    return None


def watch(world_size, hang=HANG_SECONDS, out=sys.stderr):
    """Accept the ranks' connections and report the first that closes unannounced, or
    that every other rank has waited for longer than `hang` seconds."""
    server = socket.create_server(("", 0))
    print(f"port {server.getsockname()[1]}", flush=True)
    sys.stdout.close()
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    ranks, joined, accepted, saved = {}, 0, 0, None  # joined: accepted, or given up on
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        timeout = max(deadline - time.monotonic(), 0.0) if joined < world_size else (
            min(hang / 10, 1.0) if hang > 0 else None)
        events = sel.select(timeout=timeout)
        stuck = _hung(list(ranks.values()), world_size, hang) if joined >= world_size else None
        if stuck is not None:
            resume = (f"resume from the last save with --resume {saved}" if saved
                      else "nothing was saved yet")
            print(f"error: {stuck[0].name or 'a rank'} {stuck[1]} (it hangs, or was stopped); "
                  f"ending the job ({resume}; TINYGRAD_CHAR_HANG_SECONDS sets the wait, 0 "
                  "turns this off)", file=out, flush=True)
            rank0 = [r for r in ranks.values() if r.rank == 0 and r.pid]
            if rank0:
                try:
                    os.kill(rank0[0].pid, signal.SIGKILL)  # the launcher ends the others
                except OSError:
                    pass
            return 1
        if not events and joined < world_size:  # not every rank came: watch those that did
            sel.unregister(server)
            server.close()
            joined = world_size
            if not ranks:
                return 0
        for key, _ in events:
            if key.fileobj is server:
                conn, _ = server.accept()
                sel.register(conn, selectors.EVENT_READ)
                ranks[conn] = _Rank()
                joined += 1
                accepted += 1
                if joined == world_size:
                    sel.unregister(server)
                    server.close()
                continue
            conn, rank = key.fileobj, ranks[key.fileobj]
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if data:
                rank.heard = time.monotonic()
                rank.buffer += data
                *lines, rank.buffer = rank.buffer.split(b"\n")
                for line in lines:
                    word, _, rest = line.decode(errors="replace").partition(" ")
                    if word == "hello":
                        r, pid, host = rest.split(" ", 2)
                        rank.name = f"rank {r} of {world_size} (pid {pid} on {host})"
                        rank.rank, rank.pid = int(r), int(pid)
                    elif word == "wait":
                        rank.waits, rank.since = int(rest), time.monotonic()
                    elif word == "saved":
                        saved = rest
                    elif word == "abort":
                        return 0  # the rank printed its own line and ends the job
                    elif word == "done":
                        rank.ended = True
                continue
            sel.unregister(conn)
            conn.close()
            del ranks[conn]
            if not rank.ended:
                resume = (f"resume from the last save with --resume {saved}" if saved
                          else "nothing was saved yet")
                when = "" if accepted == world_size else (
                    f" while the job was starting ({world_size - accepted} of the ranks had "
                    "not connected: one of them may be the first to go)")
                print(f"error: {rank.name or 'a rank'} died without a word{when} (killed by a "
                      "signal: SIGKILL, the out-of-memory killer or a crash); the job stops; "
                      f"{resume}", file=out, flush=True)
                return 1
            if not ranks and joined >= world_size:
                return 0


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else HANG_SECONDS))

"""Several processes as one run (`jax.distributed`): joining within a time limit, agreeing
before any work, and stopping together.

Every process of a run must take the same decisions from the same inputs. Before any work
the processes compare what they were given and what they read (`agree`): a difference
stops every one of them with one line naming it. A process that fails tells the others
(`stop`), which print its line and exit with its status: none is left waiting in a
collective. These messages travel through the `jax.distributed` key-value store, whose
waits have time limits (`config.initialization_timeout`), never through device
collectives, which have none.
"""

import contextlib
import json
import multiprocessing
import os
import socket
import sys
import threading
import time

import jax

JOIN_GRACE_S = 30  # JAX's own deadline to join beyond ours, so that ours reports first
ACK_WAIT_S = 10  # how long process 0 (it hosts the key-value store) waits for the others
# to read a stop before it exits, and then for them to be gone
EXIT_GRACE_S = 1
WATCH_S = 1  # the stop watcher's wait per call: how long exiting waits for it
_STOP = "lip_jax/stop"
_exiting = threading.Lock()
_state = {"round": 0, "timeout": 300}  # exchanges so far; config.initialization_timeout


def initialize(config) -> None:
    """Joins the other processes (TPU pods and SLURM/MPI clusters detect their peers;
    elsewhere `coordinator_address`, `num_processes` and `process_id` say who is who).
    If they have not all joined after `config.initialization_timeout` seconds, prints one
    line and exits with status 2 (JAX itself would abort later, naming nobody)."""
    if not config.distributed:
        return
    if config.coordinator_address:
        _check_resolves(config.coordinator_address)
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {}
    if config.coordinator_address:
        kw = dict(coordinator_address=config.coordinator_address,
                  num_processes=config.num_processes, process_id=config.process_id)
    timer = threading.Timer(config.initialization_timeout, _not_joined, args=(config,))
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(
            **kw, initialization_timeout=config.initialization_timeout + JOIN_GRACE_S,
            heartbeat_timeout_seconds=config.heartbeat_timeout,
            shutdown_timeout_seconds=config.heartbeat_timeout)
    except Exception as error:  # no cluster detected, an address in use, ...
        where = (f"coordinator {config.coordinator_address}" if config.coordinator_address
                 else "no config.coordinator_address: the cluster was to say it")
        raise ValueError(f"config.distributed = True: joining the other processes fails "
                         f"({where}): {error}") from None
    finally:
        timer.cancel()
    _state["timeout"] = config.initialization_timeout
    threading.Thread(target=_watch, name="lip_jax stop watcher").start()


def _check_resolves(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.getaddrinfo(host.strip("[]"), int(port))
    except (OSError, UnicodeError) as error:
        raise ValueError(f"config.coordinator_address = {address!r}: host {host!r} is not "
                         f"found ({error})") from None


def _not_joined(config) -> None:
    where = (f"at {config.coordinator_address}" if config.coordinator_address
             else "at the address the cluster gave")
    count = f" of {config.num_processes}" if config.num_processes > 0 else ""
    who = f"process {config.process_id}{count}" if config.process_id >= 0 else "this process"
    _print_and_exit(
        f"lip-jax: error: {who}: not every process joined {where} within "
        f"config.initialization_timeout = {config.initialization_timeout} s: one was not "
        "started or died, or was given another coordinator_address or num_processes", 2)


def _client():
    from jax._src import distributed  # the key-value store of jax.distributed.initialize
    return distributed.global_state.client


def exchange(what: str, value) -> list:
    """Every process's `value` (JSON), by process index; call it on every process, in
    the same order. Raises ValueError naming the processes that did not send theirs within
    `config.initialization_timeout` seconds."""
    if jax.process_count() == 1:
        return [value]
    client = _client()
    _state["round"] += 1
    key = f"lip_jax/exchange/{_state['round']}"
    client.key_value_set(f"{key}/{jax.process_index()}", json.dumps([what, value]))
    deadline = time.monotonic() + _state["timeout"]
    values, missing = [], []
    for process in range(jax.process_count()):
        wait_ms = max(int((deadline - time.monotonic()) * 1000), 1)
        try:
            sent_what, sent = json.loads(client.blocking_key_value_get(f"{key}/{process}",
                                                                       wait_ms))
        except Exception:  # DEADLINE_EXCEEDED: that process is elsewhere, or dead
            missing.append(process)
            continue
        if sent_what != what:
            raise ValueError(f"process {process} reached {sent_what!r} where this process "
                             f"reached {what!r}: the processes run different programs or "
                             "configurations")
        values.append(sent)
    if missing:
        raise ValueError(f"{_processes(missing)} did not reach {what!r} within "
                         f"config.initialization_timeout = {_state['timeout']} s: they "
                         "died, hang, or run another program")
    return values


def agree(what: str, fields: dict) -> None:
    """Checks that every process holds the same `fields` (JSON values); otherwise raises
    ValueError on every process naming each field that differs, with its value on each
    process. Call it on every process, in the same order."""
    views = exchange(what, {k: json.dumps(v, sort_keys=True) for k, v in fields.items()})
    differing = []
    for name in dict.fromkeys(k for view in views for k in view):
        by_value = {}
        for process, view in enumerate(views):
            by_value.setdefault(view.get(name, "(none)"), []).append(process)
        if len(by_value) > 1:
            differing.append(f"{name}: " + ", ".join(
                f"{value} on {_processes(processes)}" for value, processes in by_value.items()))
    if differing:
        raise ValueError(f"the processes disagree on {what}: {'; '.join(differing)}; start "
                         "every process with the same command, configuration and data")


def _processes(indices: list[int]) -> str:
    return ("process " if len(indices) == 1 else "processes ") + ", ".join(map(str, indices))


def stop(message: str, status: int, at_once: bool = False) -> None:
    """Prints `lip-jax: error: <message>` and exits with `status`. In a distributed run it
    first tells every other process, which print the message with this process's index and
    exit with the same status; the processes leave without JAX's shutdown barrier, which
    would wait for the ones that cannot come. `at_once` skips the interpreter's clean-up
    (after an interrupt, XLA's compiler threads may still run, and crash it)."""
    line = f"lip-jax: error: {message}"
    if not jax.distributed.is_initialized():
        _flush(line)
        (os._exit if at_once else sys.exit)(status)
    _leave(line, status, json.dumps([jax.process_index(), status, message]))


def _watch() -> None:
    """Waits for another process's stop; then prints its line and exits likewise. Ends
    with the main thread (a thread left inside a wait of the key-value store when the
    interpreter finalizes would abort it)."""
    client = _client()
    while threading.main_thread().is_alive():
        try:
            record = client.blocking_key_value_get(_STOP, WATCH_S * 1000)
        except Exception as error:
            if "DEADLINE_EXCEEDED" in str(error):
                continue
            return  # the client shut down: the run ended
        origin, status, message = json.loads(record)
        _leave(f"lip-jax: error: process {origin} of {jax.process_count()}: {message}", status)


def _leave(line: str, status: int, stop_record: str | None = None) -> None:
    if not _exiting.acquire(blocking=False):
        threading.Event().wait()  # another thread of this process is leaving
    client, me = _client(), jax.process_index()
    _flush(line)
    if stop_record is not None:
        with contextlib.suppress(Exception):  # another process stopped first: all know
            client.key_value_set(_STOP, stop_record)
    if me != 0:
        with contextlib.suppress(Exception):
            client.key_value_set(f"lip_jax/stopped/{me}", "")
        os._exit(status)  # at once: process 0 leaves after this, taking the store away
    deadline = time.monotonic() + ACK_WAIT_S
    for process in range(1, jax.process_count()):
        with contextlib.suppress(Exception):  # dead, or stuck holding the interpreter
            client.blocking_key_value_get(f"lip_jax/stopped/{process}",
                                          max(int((deadline - time.monotonic()) * 1000), 1))
    time.sleep(EXIT_GRACE_S)
    os._exit(status)


def _flush(line: str | None) -> None:
    """Prints `line` to stderr after stdout's pending output; ends grain's input workers."""
    sys.stdout.flush()
    if line:
        print(line, file=sys.stderr, flush=True)
    for child in multiprocessing.active_children():
        child.terminate()
    sys.stdout.flush()
    sys.stderr.flush()


def _print_and_exit(line: str | None, status: int) -> None:
    _flush(line)
    os._exit(status)

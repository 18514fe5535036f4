#!/usr/bin/env python3
"""CI check: a real third-party ESL client (greenswitch, from PyPI) talks to
the Redswitch FreeSWITCH simulator as if it were FreeSWITCH.

Checks, each on its own connection:
  wrong_password   greenswitch's connect fails on a wrong password
  api              auth, `api status`, an unknown api command
  bgapi            `bgapi status` with a client-chosen Job-UUID and its
                   BACKGROUND_JOB event
  call_events      subscribe, originate a call, receive CHANNEL_CREATE and
                   CHANNEL_ANSWER for it, `uuid_kill` it, receive its
                   CHANNEL_HANGUP_COMPLETE

Prints one line per check, then `esl client check: N passed, M failed`.
Exits 0 when every check passed, 1 otherwise.

Usage: python3 ci/esl_client_check.py [HOST [PORT [PASSWORD]]]
(defaults 127.0.0.1 8021 ClueCon; the simulator must be running).
"""

import sys
import uuid

import gevent
import gevent.event
import greenswitch

TIMEOUT = 5


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def connect(host, port, password):
    fs = greenswitch.InboundESL(host=host, port=port, password=password)
    fs.connect()
    return fs


def check_wrong_password(host, port, password):
    fs = greenswitch.InboundESL(host=host, port=port, password=password + "-wrong")
    try:
        fs.connect()
    except OSError as e:
        raise CheckFailed(f"could not reach the simulator: {e!r}")
    except Exception as e:  # greenswitch raises a plain Exception on a bad password
        return f"refused: {e}"
    fs.stop()
    raise CheckFailed("a wrong password was accepted")


def check_api(host, port, password):
    fs = connect(host, port, password)
    try:
        body = (fs.send("api status").data or "").strip()
        expect(body.startswith("UP "), f"api status returned {body!r}")
        unknown = fs.send("api no_such_command").data or ""
        expect(
            unknown == "-ERR no_such_command Command not found!\n",
            f"unknown api returned {unknown!r}",
        )
        return body.splitlines()[0]
    finally:
        fs.stop()


def subscribe(fs, names):
    got = {}
    flags = {name: gevent.event.Event() for name in names}

    def on_event(event):
        name = event.headers.get("Event-Name")
        got.setdefault(name, []).append(event)
        if name in flags:
            flags[name].set()

    for name in names:
        fs.register_handle(name, on_event)
    reply = fs.send("event plain " + " ".join(names))
    expect(
        reply.headers.get("Reply-Text") == "+OK event listener enabled plain",
        f"event subscription reply {reply.headers!r}",
    )
    return got, flags


def check_bgapi(host, port, password):
    fs = connect(host, port, password)
    try:
        got, flags = subscribe(fs, ["BACKGROUND_JOB"])
        job = str(uuid.uuid4())
        reply = fs.send(f"bgapi status\nJob-UUID: {job}")
        expect(reply.headers.get("Job-UUID") == job, f"bgapi reply {reply.headers!r}")
        expect(flags["BACKGROUND_JOB"].wait(timeout=TIMEOUT), "no BACKGROUND_JOB event")
        bg = got["BACKGROUND_JOB"][0]
        # greenswitch folds an event's body into its last header; the
        # headers are what identify the job.
        expect(
            bg.headers.get("Job-UUID") == job and bg.headers.get("Job-Command") == "status",
            f"BACKGROUND_JOB mismatch: {bg.headers!r}",
        )
        return f"BACKGROUND_JOB {job}"
    finally:
        fs.stop()


def wait_for(got, flags, name, call):
    deadline = gevent.Timeout(TIMEOUT)
    deadline.start()
    try:
        while True:
            if any(e.headers.get("Unique-ID") == call for e in got.get(name, [])):
                return next(e for e in got[name] if e.headers.get("Unique-ID") == call)
            flags[name].clear()
            flags[name].wait()
    except gevent.Timeout:
        raise CheckFailed(f"no {name} for {call}")
    finally:
        deadline.cancel()


def check_call_events(host, port, password):
    fs = connect(host, port, password)
    try:
        names = ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE"]
        got, flags = subscribe(fs, names)
        call = str(uuid.uuid4())
        reply = fs.send(
            f"api originate {{origination_uuid={call}}}sofia/gateway/gw/14155550100 &park()"
        )
        expect((reply.data or "").strip() == f"+OK {call}", f"originate returned {reply.data!r}")
        wait_for(got, flags, "CHANNEL_CREATE", call)
        wait_for(got, flags, "CHANNEL_ANSWER", call)
        reply = fs.send(f"api uuid_kill {call}")
        expect((reply.data or "").strip() == "+OK", f"uuid_kill returned {reply.data!r}")
        hc = wait_for(got, flags, "CHANNEL_HANGUP_COMPLETE", call)
        cause = hc.headers.get("Hangup-Cause")
        expect(cause == "NORMAL_CLEARING", f"hangup cause {cause!r}")
        return f"CREATE, ANSWER, HANGUP_COMPLETE ({cause}) for {call}"
    finally:
        fs.stop()


CHECKS = [
    ("wrong_password", check_wrong_password),
    ("api", check_api),
    ("bgapi", check_bgapi),
    ("call_events", check_call_events),
]


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8021
    password = sys.argv[3] if len(sys.argv) > 3 else "ClueCon"
    passed = failed = 0
    for name, check in CHECKS:
        try:
            detail = check(host, port, password)
            passed += 1
            print(f"PASS {name}: {detail}", flush=True)
        except Exception as e:  # any failure of one check must not hide the others
            failed += 1
            print(f"FAIL {name}: {e!r}", flush=True)
    print(f"esl client check: {passed} passed, {failed} failed", flush=True)
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()

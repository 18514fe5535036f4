#!/usr/bin/env python3
"""CI check: a real third-party ESL client (greenswitch, from PyPI) talks to
the Redswitch FreeSWITCH simulator as if it were FreeSWITCH.

It authenticates, runs `api status`, runs a `bgapi status` and waits for its
BACKGROUND_JOB, subscribes to channel events, originates a call and waits for
CHANNEL_CREATE and CHANNEL_ANSWER of that call, then hangs it up.
Exits 0 on success, 1 with a message on failure.

Usage: python3 ci/esl_client_check.py [HOST [PORT [PASSWORD]]]
(defaults 127.0.0.1 8021 ClueCon; the simulator must be running).
"""

import sys
import uuid

import gevent
import greenswitch


def fail(msg):
    print(f"esl_client_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8021
    password = sys.argv[3] if len(sys.argv) > 3 else "ClueCon"

    fs = greenswitch.InboundESL(host=host, port=port, password=password)
    try:
        fs.connect()
    except Exception as e:  # greenswitch raises plain Exceptions on auth errors
        fail(f"connect/auth failed: {e!r}")

    status = fs.send("api status")
    body = (status.data or "").strip()
    if not body.startswith("UP "):
        fail(f"api status returned {body!r}")
    print("api status:", body.splitlines()[0])

    events = {}
    done = {name: gevent.event.Event() for name in ("BACKGROUND_JOB", "CHANNEL_CREATE", "CHANNEL_ANSWER")}

    def on_event(event):
        name = event.headers.get("Event-Name")
        events.setdefault(name, []).append(event)
        if name in done:
            done[name].set()

    for name in done:
        fs.register_handle(name, on_event)

    reply = fs.send("event plain BACKGROUND_JOB CHANNEL_CREATE CHANNEL_ANSWER")
    if reply.headers.get("Reply-Text") != "+OK event listener enabled plain":
        fail(f"event subscription reply {reply.headers!r}")

    job = str(uuid.uuid4())
    reply = fs.send(f"bgapi status\nJob-UUID: {job}")
    if reply.headers.get("Job-UUID") != job:
        fail(f"bgapi reply {reply.headers!r}")
    if not done["BACKGROUND_JOB"].wait(timeout=5):
        fail("no BACKGROUND_JOB event")
    bg = events["BACKGROUND_JOB"][0]
    # greenswitch folds an event's body into its last header; the headers
    # are what identify the job.
    if bg.headers.get("Job-UUID") != job or bg.headers.get("Job-Command") != "status":
        fail(f"BACKGROUND_JOB mismatch: {bg.headers!r}")
    print("bgapi status: BACKGROUND_JOB", job)

    call = str(uuid.uuid4())
    reply = fs.send(f"api originate {{origination_uuid={call}}}sofia/gateway/gw/14155550100 &park()")
    if (reply.data or "").strip() != f"+OK {call}":
        fail(f"originate returned {reply.data!r}")
    for name in ("CHANNEL_CREATE", "CHANNEL_ANSWER"):
        if not done[name].wait(timeout=5):
            fail(f"no {name} event")
        if not any(e.headers.get("Unique-ID") == call for e in events[name]):
            fail(f"{name} for another channel")
    print("originate: CHANNEL_CREATE and CHANNEL_ANSWER for", call)

    reply = fs.send(f"api uuid_kill {call}")
    if (reply.data or "").strip() != "+OK":
        fail(f"uuid_kill returned {reply.data!r}")
    fs.stop()
    print("esl_client_check: OK")


if __name__ == "__main__":
    main()

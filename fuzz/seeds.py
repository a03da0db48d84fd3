#!/usr/bin/env python3
"""Writes the seed corpus of every target into corpus/<target>/.

Each seed is a small valid input: frames in bincode's standard configuration (varint
integers, little endian) behind the 4-byte big-endian length of transport::frame,
control-socket lines in JSON, scripts for the roster and heartbeat targets. The frame
layouts follow the pinned encodings in src/daemon/wire.rs (the `layouts` test).

Run from fuzz/: python3 seeds.py
"""
import hashlib
import json
import os
import struct


def varint(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def s(text):
    b = text.encode()
    return varint(len(b)) + b


def blob(b):
    return varint(len(b)) + bytes(b)


def seq(items):
    return varint(len(items)) + b"".join(items)


def opt(x):
    return b"\x00" if x is None else b"\x01" + x


def boolean(v):
    return b"\x01" if v else b"\x00"


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def dev(b):
    return bytes([b]) * 32


def v4(a, b, c, d, port):
    # SocketAddr::V4 (variant 0): 4 address bytes, varint port.
    return b"\x00" + bytes([a, b, c, d]) + varint(port)


def v6(port):
    return b"\x01" + bytes(15) + b"\x01" + varint(port)


def origin(b, epoch=1):
    return dev(b) + varint(epoch)


def change(key, value, o, seq_, supersedes=()):
    version = varint(1_700_000_000_000) + varint(0) + origin(o) + varint(seq_)
    return (s(key) + opt(None if value is None else blob(value)) + version
            + seq([origin(x) + varint(n) for x, n in supersedes]))


def vv(pairs):
    return varint(len(pairs)) + b"".join(origin(o) + varint(n) for o, n in pairs)


def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def control_line():
    lines = {
        "status": [{"id": 1, "cmd": "status"}],
        "send-inline": [{"id": 2, "cmd": "send", "peer": "laptop", "tag": "notify.show", "body": "hi"}],
        "kv-put-b64": [{"id": 3, "cmd": "kv.put", "key": "a/b", "value_b64": "aGk="}],
        "kv-get": [{"id": 4, "cmd": "kv.get", "key": "a/b"}],
        "bad-cmd": [{"id": 5, "cmd": "nope"}],
        "ping": [{"id": 6, "cmd": "ping", "peer": "phone", "timeout_ms": 100}],
        "kv-list": [{"cmd": "kv.list", "prefix": "a/"}],
    }
    for name, reqs in lines.items():
        body = b"".join(json.dumps(r).encode() + b"\n" for r in reqs)
        write("control_line", name, b"\x00\x10" + body)
    # Raw bodies after the line, and a refused line whose body must be skipped.
    send_raw = json.dumps({"id": 7, "cmd": "send", "peer": "laptop", "tag": "t", "body_len": 5}).encode()
    write("control_line", "send-raw", b"\x00\x07" + send_raw + b"\nhello" + b'{"cmd":"status"}\n')
    bad_send = json.dumps({"id": 8, "cmd": "send", "tag": "t", "body_len": 3, "bogus": 1}).encode()
    write("control_line", "refused-send-skips-body", b"\x00\x05" + bad_send + b"\nxyz" + b'{"cmd":"peers"}\n')
    batch = json.dumps({"id": 9, "cmd": "kv.batch", "ops": [
        {"op": "put", "key": "k1", "value_len": 2},
        {"op": "del", "key": "k2"},
        {"op": "put", "key": "k3", "value": "v"}]}).encode()
    write("control_line", "kv-batch", b"\x00\x20" + batch + b"\nab")
    write("control_line", "too-long", b"\x01\x03" + b'{"cmd":"status","pad":"xxxxxxxxxxxxxxx"}\n{"cmd":"peers"}\n')
    write("control_line", "blank-lines", b"\x00\x01" + b"\n  \n" + b'{"cmd":"services"}\n')


def membership_msgs():
    ping = b"\x01" + b"\x00" + varint(7) + boolean(True)
    ack = b"\x01" + b"\x01" + varint(7)
    record = b"\x00" + dev(2) + varint(1) + varint(3) + boolean(False) + seq(
        [dev(3) + varint(1500) + opt(v4(10, 0, 0, 3, 7373))])
    event = b"\x01" + dev(2) + varint(1) + varint(4) + blob(b"payload")
    gossip = b"\x01" + b"\x04" + seq([record, event])
    digest_full = b"\x01" + b"\x06" + boolean(True) + seq([dev(2) + varint(1) + varint(3)]) + seq([dev(2) + varint(1)])
    beat = b"\x01" + b"\x07" + opt(varint(99))
    return {"ping": ping, "ack": ack, "gossip": gossip, "digest-full": digest_full, "beat": beat}


def mesh_frames():
    mem = membership_msgs()
    addrs = b"\x01" + seq([dev(1) + seq([v4(10, 0, 0, 1, 7373), v6(7373)])])
    punch = b"\x03" + dev(1) + dev(2) + varint(7) + b"\x00" + seq([v4(203, 0, 113, 1, 7373)])
    relay = b"\x04" + seq([s("relay.example:7000") + s("secret") + blob(bytes(16)) + boolean(False)
                          + varint(1) + bytes(32) + blob(bytes(64))])
    roster = b"\x00" + seq([dev(2) + s("phone") + varint(1) + bytes(32) + blob(bytes(64))]) + seq([])
    write("mesh_frames", "roster", b"\x00" + frame(roster))
    write("mesh_frames", "addrs-punch", b"\x00" + frame(addrs) + frame(punch) + frame(b"\x03" + dev(1) + dev(2) + varint(7) + b"\x02"))
    write("mesh_frames", "relays", b"\x00" + frame(relay))
    for name, m in mem.items():
        write("mesh_frames", "membership-" + name, b"\x00" + frame(b"\x02" + blob(m)))
        write("mesh_frames", "raw-membership-" + name, b"\x02" + m)
    hello = s("laptop") + seq([s("heartbeat"), s("observed=203.0.113.7:40112")])
    write("mesh_frames", "control-hello", b"\x01" + frame(b"\x00" + varint(3) + hello) + frame(b"\x03" + varint(5)))
    write("mesh_frames", "control-reject", b"\x01" + frame(b"\x02" + s("version")))


def message_frames():
    header = (s("00000000000000ab") + s("notify.show") + varint(5) + boolean(True)
              + opt(dev(2)) + opt(None) + boolean(False))
    write("message_frames", "header", b"\x00" + frame(header))
    write("message_frames", "lane-msgs", b"\x01" + frame(varint(3) + header) + frame(varint(4) + header))
    replies = b"\x02" + seq([s("h.sh") + opt(b"\x00") + blob(b"ok") + boolean(False)])
    write("message_frames", "result-replies", b"\x02" + frame(replies))
    write("message_frames", "result-nack", b"\x02" + frame(b"\x01" + s("unreachable") + s("m")))
    write("message_frames", "lane-results", b"\x03" + frame(varint(3) + b"\x00") + frame(varint(4) + replies))
    write("message_frames", "app-open-ok", b"\x04" + frame(b"\x00" + s("ssh")) + frame(b"\x01"))
    write("message_frames", "app-relay", b"\x04" + frame(b"\x03" + s("s") + dev(4)) + frame(b"\x04" + s("s") + dev(5)))
    write("message_frames", "app-err", b"\x04" + frame(b"\x02" + s("x") + s("y")))


def sync_frames():
    c1 = change("a/b", b"v1", 9, 1)
    c2 = change("a/c", None, 9, 2, [(9, 1)])
    delta = b"\x00" + seq([c1, c2]) + vv([(9, 2)]) + boolean(False) + seq([origin(9) + varint(1) + varint(2)])
    write("sync_frames", "down-delta", b"\x00" + frame(delta))
    write("sync_frames", "down-delta-more", b"\x00" + frame(b"\x00" + seq([c1]) + vv([(9, 1)]) + boolean(True) + seq([]))
          + frame(b"\x00" + seq([c2]) + vv([(9, 2)]) + boolean(False) + seq([])))
    rng = b"\x00" + varint(0)  # Range { level 0, prefix 0 }
    child_items = b"\x01" + seq([varint(5) + bytes(8)])
    child_fp = b"\x00" + varint(40) + bytes(8)
    recon = b"\x01" + seq([rng + seq([child_items, child_fp])])
    write("sync_frames", "down-recon", b"\x00" + frame(recon) + frame(b"\x03" + seq([origin(9) + varint(1) + varint(1)]))
          + frame(b"\x02" + seq([c1])) + frame(b"\x00" + seq([]) + vv([(9, 2)]) + boolean(False) + seq([])))
    write("sync_frames", "up-hello", b"\x01" + frame(b"\x00" + varint(3) + vv([(7, 10)]) + varint(7)))
    write("sync_frames", "up-seen-recon", b"\x01" + frame(b"\x01" + vv([(9, 2)]))
          + frame(b"\x02" + seq([rng]) + seq([varint(5)])))


def pair_frames():
    start = b"\x00" + varint(1) + s("joiner") + varint(7374) + bytes(32) + blob(bytes(33))
    reply = b"\x01" + s("window") + varint(7373) + bytes(32) + blob(bytes(33))
    welcome = b"\x03" + blob(bytes(32)) + s("joiner") + seq([]) + seq([])
    write("pair_frames", "window-start-confirm", b"\x00" + frame(start) + frame(b"\x02" + blob(bytes(32))))
    write("pair_frames", "window-start-old-version", b"\x00" + frame(b"\x00" + varint(9) + start[2:]))
    write("pair_frames", "joiner-reply-welcome", b"\x01" + frame(reply) + frame(welcome))
    write("pair_frames", "joiner-fail", b"\x01" + frame(b"\x04" + s("wrong code")) + frame(b"\x05"))
    write("pair_frames", "honest-right-code", b"\x02" + bytes([0, 0, 0, 0, 0]))
    write("pair_frames", "honest-wrong-code", b"\x02" + bytes([1, 0, 0, 0, 0]))
    write("pair_frames", "honest-damaged-confirm", b"\x02" + bytes([0, 2, 3, 0, 0x40]))


def roster():
    member = dev(2) + s("phone") + varint(1) + bytes(32) + blob(bytes(64))
    removal = dev(3) + varint(2) + bytes(32) + blob(bytes(64))
    write("roster", "bincode", b"\x00" + frame(seq([member]) + seq([removal])))
    snap = {"members": [{"id": [2] * 32, "name": "phone", "version": 1, "signer": [0] * 32, "sig": [0] * 64}],
            "removals": [{"id": [3] * 32, "version": 2, "signer": [0] * 32, "sig": [0] * 64}]}
    write("roster", "json", b"\x00" + json.dumps(snap).encode())
    # Scripts: (kind | batch break, subject, signer, version | name << 5).
    write("roster", "chain", b"\x01" + bytes([0, 1, 0, 1, 0, 2, 1, 2, 0x80, 3, 2, 3]))
    write("roster", "rename", b"\x01" + bytes([0, 1, 0, 1, 0, 1, 0, 2 | 1 << 5]))
    write("roster", "remove-member", b"\x01" + bytes([0, 1, 0, 1, 0, 2, 1, 2, 0x81, 2, 1, 3]))
    write("roster", "remove-self", b"\x01" + bytes([0, 1, 0, 1, 1, 0, 1, 2]))


def heartbeat():
    material = hashlib.sha512(b"cnspr fuzz").digest() + hashlib.sha256(b"cnspr fuzz").digest()[:16]
    assert len(material) == 80
    # seal, seal with digest, deliver #0, deliver #1, replay #0, damaged #1.
    script = bytes([0, 0, 0, 0, 1, 1, 2, 3, 2, 0, 0, 0, 2, 1, 0, 0, 2, 0, 0, 0, 2, 1, 5, 1])
    write("heartbeat", "seal-open-replay", material + b"\x83" + script)
    write("heartbeat", "many-ids", material + b"\xff" + script)
    write("heartbeat", "datagram", material + b"\x01" + bytes([3, 42, 0x21]) + bytes(50))


if __name__ == "__main__":
    control_line()
    mesh_frames()
    message_frames()
    sync_frames()
    pair_frames()
    roster()
    heartbeat()

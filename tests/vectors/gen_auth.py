#!/usr/bin/env python3
"""Writes tests/vectors/auth.json: the authenticated-link handshake and
sealed (and encrypted) messages of docs/auth.md computed from fixed inputs.

Run with CPython (python3 tests/vectors/gen_auth.py); it uses only the
standard library, with a tiny MsgPack encoder for the few types involved,
so the vectors do not come from either implementation under test.
"""
import hashlib
import hmac
import json
import os
import struct


def pack(v):
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        assert 0 <= v < 2**32
        if v < 128:
            return bytes([v])
        if v < 256:
            return b"\xcc" + bytes([v])
        if v < 65536:
            return b"\xcd" + struct.pack(">H", v)
        return b"\xce" + struct.pack(">I", v)
    if isinstance(v, str):
        b = v.encode()
        assert len(b) < 32
        return bytes([0xA0 | len(b)]) + b
    if isinstance(v, bytes):
        assert len(v) < 256
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list):
        assert len(v) < 16
        return bytes([0x90 | len(v)]) + b"".join(pack(x) for x in v)
    if isinstance(v, dict):  # insertion order is the wire order
        assert len(v) < 16
        return bytes([0x80 | len(v)]) + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(v)


def note(v):
    """The vectors' JSON notation (mux-runtime/src/notation.rs)."""
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, list):
        return [note(x) for x in v]
    if isinstance(v, dict):
        return {"$map": [[k, note(x)] for k, x in v.items()]}
    return v


def mac(key, *parts):
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


K = bytes(range(32))
NI = bytes(range(0x40, 0x50))
NR = bytes(range(0x80, 0x90))
NAME = "demo"
PROJECT = "3f2a9c1d5e6b7a80"
PROJECT_NAME = "garden"  # informative only: not in TR (see docs/auth.md)
M = 1024

TR = mac(K, b"moat/1 R", NI, NR, NAME.encode(), b"\x00", PROJECT.encode())
TI = mac(K, b"moat/1 I", NR, NI)
KS = mac(K, b"moat/1 S", NI, NR)
KE = mac(K, b"moat/1 E", NI, NR)

hello = {"h": 1, "c": NI}
challenge = {"h": 2, "c": NR, "n": NAME, "p": PROJECT, "q": PROJECT_NAME, "m": M, "t": TR}
proof = {"h": 3, "t": TI}
# a responder whose link encrypts says so last (not in TR)
challenge_e = dict(challenge, e=True)


STREAM_TAG = 16  # tcp, process, usb: {s: bin(c | T | B)}
FRAME_TAG = 8  # serial (reliable frames): bin(c | T | B)


def seal(direction, counter, body, tag_len=STREAM_TAG):
    """c | T | B: c the counter's low byte, T over the full 4-byte counter.
    `direction` is I or R, i or r in an encrypted session."""
    tag = mac(KS, direction.encode(), struct.pack(">I", counter), body)[:tag_len]
    return bytes([counter & 0xFF]) + tag + body, tag


def entry(name, direction, counter, message, form="stream"):
    body = pack(message)
    if form == "stream":
        blob, tag = seal(direction, counter, body)
        wire = pack({"s": blob})
    else:
        blob, tag = seal(direction, counter, body, FRAME_TAG)
        wire = pack(blob)
    return {
        "name": name,
        "dir": direction,
        "counter": counter,
        "message": note(message),
        "body": body.hex(),
        "tag": tag.hex(),
        "hex": wire.hex(),
    }


def keystream(direction, counter, n):
    c = struct.pack(">I", counter)
    out = b""
    j = 0
    while len(out) < n:
        out += mac(KE, direction.lower().encode(), c, struct.pack(">I", j))
        j += 1
    return out[:n]


def encrypted_entry(name, direction, counter, message):
    body = pack(message)
    x = bytes(a ^ b for a, b in zip(body, keystream(direction, counter, len(body))))
    # encrypt-then-MAC: T over X, D lowercase
    blob, tag = seal(direction.lower(), counter, x)
    return {
        "name": name,
        "dir": direction,
        "counter": counter,
        "message": note(message),
        "body": body.hex(),
        "cipher": x.hex(),
        "tag": tag.hex(),
        "hex": pack({"x": blob}).hex(),
    }


ping = {"a": ["ping"], "d": {"m": "hi"}, "i": 2}
reply = {"d": {"m": "hi"}, "i": 3}
sealed = [
    entry("first request, initiator to responder", "I", 1, ping),
    entry("first reply, responder to initiator", "R", 1, reply),
    entry("second request", "I", 2, {"a": ["sys", "info"], "i": 4}),
    entry("counter past 255", "I", 300, ping),
]
# serial links: the same messages as a bare bin with an 8-byte tag
sealed_serial = [
    entry("first request on a serial link", "I", 1, ping, "frame"),
    entry("first reply on a serial link", "R", 1, reply, "frame"),
    entry("counter past 255 on a serial link", "I", 300, ping, "frame"),
]

# a body of more than one keystream block (32 bytes)
# (one key per map: MicroPython's dicts do not keep insertion order, so the
# node's packer would order a map of several keys its own way)
long_cfg = {"a": ["ping"], "d": {"m": "correct horse battery staple"}, "i": 6}
encrypted = [
    encrypted_entry("first request, encrypted, initiator to responder", "I", 1, ping),
    encrypted_entry("first reply, encrypted, responder to initiator", "R", 1, reply),
    encrypted_entry("a body over two keystream blocks", "I", 2, long_cfg),
]

first = bytes.fromhex(sealed[0]["hex"])
flip = bytearray(first)
flip[-1] ^= 0x01
wrong_dir = pack({"s": seal("R", 1, pack(ping))[0]})
zero = pack({"s": seal("I", 0, pack(ping))[0]})
short = pack({"s": seal("I", 1, pack(ping))[0][:16]})
rejected = [
    {"name": "a bit flipped in the body", "dir": "I", "last": 0, "hex": bytes(flip).hex()},
    {"name": "replayed (counter not above the last accepted)", "dir": "I", "last": 1, "hex": first.hex()},
    {"name": "reordered (older counter after a newer one)", "dir": "I", "last": 2, "hex": first.hex()},
    {"name": "replayed 256 messages later (same low byte)", "dir": "I", "last": 256, "hex": first.hex()},
    {"name": "sealed for the other direction", "dir": "I", "last": 0, "hex": wrong_dir.hex()},
    {"name": "counter 0", "dir": "I", "last": 0, "hex": zero.hex()},
    {"name": "shorter than counter and tag", "dir": "I", "last": 0, "hex": short.hex()},
    {"name": "unsealed message", "dir": "I", "last": 0, "hex": pack(ping).hex()},
    {"name": "a serial link's bare bin on a stream link", "dir": "I", "last": 0, "hex": sealed_serial[0]["hex"]},
]
# dropped by a serial link's opener (form "frame")
serial_first = bytes.fromhex(sealed_serial[0]["hex"])
sflip = bytearray(serial_first)
sflip[-1] ^= 0x01
serial_rejected = [
    {"name": "a bit flipped in the body (serial)", "dir": "I", "last": 0, "hex": bytes(sflip).hex()},
    {"name": "replayed (serial)", "dir": "I", "last": 1, "hex": serial_first.hex()},
    {"name": "the stream form on a serial link", "dir": "I", "last": 0, "hex": first.hex()},
    {"name": "shorter than counter and tag (serial)", "dir": "I", "last": 0, "hex": pack(serial_first[2:10]).hex()},
]
# dropped by an encrypted session: a plain seal (s) under the right KS,
# and ciphertext with a bit flipped (the tag fails before decryption)
eflip = bytearray(bytes.fromhex(encrypted[0]["hex"]))
eflip[-1] ^= 0x01
encrypted_rejected = [
    {"name": "a plain sealed message in an encrypted session", "dir": "I", "last": 0, "hex": first.hex()},
    {"name": "a plain seal relabelled x (D is lowercase when encrypted)", "dir": "I", "last": 0, "hex": pack({"x": seal("I", 1, pack(ping))[0]}).hex()},
    {"name": "a bit flipped in the ciphertext", "dir": "I", "last": 0, "hex": bytes(eflip).hex()},
    {"name": "replayed encrypted message", "dir": "I", "last": 1, "hex": encrypted[0]["hex"]},
]

doc = {
    "about": "docs/auth.md: handshake and sealed messages from fixed inputs (written by gen_auth.py)",
    "key": K.hex(),
    "ni": NI.hex(),
    "nr": NR.hex(),
    "name": NAME,
    "project": PROJECT,
    "project_name": PROJECT_NAME,
    "m": M,
    "tr": TR.hex(),
    "ti": TI.hex(),
    "session_key": KS.hex(),
    "encryption_key": KE.hex(),
    "handshake": [
        {"name": "hello (I to R)", "value": note(hello), "hex": pack(hello).hex()},
        {"name": "challenge (R to I)", "value": note(challenge), "hex": pack(challenge).hex()},
        {"name": "proof (I to R)", "value": note(proof), "hex": pack(proof).hex()},
    ],
    "challenge_encrypted": {"name": "challenge of a responder that encrypts", "value": note(challenge_e), "hex": pack(challenge_e).hex()},
    "sealed": sealed,
    "rejected": rejected,
    "sealed_serial": sealed_serial,
    "serial_rejected": serial_rejected,
    "encrypted": encrypted,
    "encrypted_rejected": encrypted_rejected,
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auth.json")
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print("wrote", out)

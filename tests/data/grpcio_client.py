#!/usr/bin/env python3
"""A konnectivity frontend written with Python grpcio (gRPC C-core), as a
client that is neither grpc-go nor tonic.

Used by tests/konnectivity_grpcio.rs. It dials the server's gRPC frontend at
--target (e.g. unix:///tmp/x/grpc.sock) with grpcio's DEFAULT authority (no
grpc.default_authority option: C-core then derives :authority from the
target, which for unix: targets is the socket path, percent-encoded since
grpcio 1.57), and runs one tunnel:

  DIAL_REQ{tcp, --address, random} -> DIAL_RSP{connectID}
  DATA{GET --path}                 -> DATA... (the whole HTTP response)
  CLOSE_REQ{connectID}             -> CLOSE_RSP
  half-close                       -> the server ends the stream

The Python protobuf/gRPC modules are generated at run time from the repo's
proto/client.proto with grpcio-tools (python -m grpc_tools.protoc) into
--gen-dir.

Prints one JSON object on stdout: grpcio version, the channel target, the
HTTP status line and body, the packet types seen; exits non-zero on any
protocol error. Every wait is bounded by --timeout (seconds) overall.
"""

import argparse
import json
import os
import queue
import random
import sys
import threading
import time


def generate(proto_dir, gen_dir):
    from grpc_tools import protoc

    os.makedirs(gen_dir, exist_ok=True)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            "-I" + proto_dir,
            "--python_out=" + gen_dir,
            "--grpc_python_out=" + gen_dir,
            os.path.join(proto_dir, "client.proto"),
        ]
    )
    if rc != 0:
        raise SystemExit("grpc_tools.protoc failed with %d" % rc)
    sys.path.insert(0, gen_dir)


def fail(msg, **extra):
    extra["error"] = msg
    print(json.dumps(extra), flush=True)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="e.g. unix:///path/to.sock")
    ap.add_argument("--address", required=True, help="host:port the agent dials")
    ap.add_argument("--path", default="/hello")
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--gen-dir", required=True)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()

    generate(args.proto_dir, args.gen_dir)
    import grpc
    import client_pb2 as pb
    import client_pb2_grpc as pb_grpc

    deadline = time.monotonic() + args.timeout
    info = {"grpcio": grpc.__version__, "target": args.target, "seen": []}

    # No options at all: in particular no grpc.default_authority, so the
    # :authority is whatever this grpcio derives from a unix: target.
    channel = grpc.insecure_channel(args.target)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.timeout)
    except grpc.FutureTimeoutError:
        fail("channel not ready within %ss" % args.timeout, **info)

    stub = pb_grpc.ProxyServiceStub(channel)
    outbox = queue.Queue()

    def requests():
        # Bounded: ends at the overall deadline even if nobody sends None.
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                p = outbox.get(timeout=left)
            except queue.Empty:
                return
            if p is None:
                return
            yield p

    call = stub.Proxy(requests(), timeout=args.timeout)
    inbox = queue.Queue()

    def reader():
        try:
            for p in call:
                inbox.put(p)
            inbox.put(("end", call.code()))
        except grpc.RpcError as e:
            inbox.put(("rpc-error", e.code(), e.details()))

    threading.Thread(target=reader, daemon=True).start()

    def next_packet():
        left = deadline - time.monotonic()
        if left <= 0:
            fail("deadline passed", **info)
        try:
            p = inbox.get(timeout=left)
        except queue.Empty:
            fail("no packet before the deadline", **info)
        if isinstance(p, tuple):
            info["stream_end"] = [str(x) for x in p]
            return None
        info["seen"].append(pb.PacketType.Name(p.type))
        return p

    dial_id = random.getrandbits(63)
    outbox.put(
        pb.Packet(
            type=pb.DIAL_REQ,
            dialRequest=pb.DialRequest(protocol="tcp", address=args.address, random=dial_id),
        )
    )
    rsp = next_packet()
    if rsp is None:
        fail("stream ended before DIAL_RSP", **info)
    if rsp.type != pb.DIAL_RSP or rsp.dialResponse.random != dial_id:
        fail("expected DIAL_RSP for %d, got %s" % (dial_id, rsp), **info)
    if rsp.dialResponse.error:
        fail("dial failed: " + rsp.dialResponse.error, **info)
    cid = rsp.dialResponse.connectID
    if cid == 0:
        fail("DIAL_RSP without connectID", **info)
    info["connect_id"] = cid

    request = "GET %s HTTP/1.1\r\nHost: target\r\n\r\n" % args.path
    outbox.put(
        pb.Packet(type=pb.DATA, data=pb.Data(connectID=cid, data=request.encode()))
    )

    # The HTTP response: head, then Content-Length bytes.
    buf = b""
    closed = False
    body = None
    while body is None:
        p = next_packet()
        if p is None:
            fail("stream ended inside the response", got=buf.decode("latin-1"), **info)
        if p.type == pb.DATA:
            if p.data.connectID != cid:
                fail("DATA for connectID %d, not %d" % (p.data.connectID, cid), **info)
            buf += p.data.data
        elif p.type == pb.CLOSE_RSP:
            closed = True
        else:
            fail("unexpected %s" % pb.PacketType.Name(p.type), **info)
        if b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if len(rest) >= length:
                body = rest[:length]
                info["status"] = head.split(b"\r\n")[0].decode()
                info["body"] = body.decode("latin-1")
        if closed and body is None:
            fail("CLOSE_RSP before the whole response", got=buf.decode("latin-1"), **info)

    # Close the tunnel. The target closes its side after one response, so
    # the agent's own CLOSE_RSP may already be on its way; either way one
    # CLOSE_RSP for cid ends the tunnel.
    outbox.put(pb.Packet(type=pb.CLOSE_REQ, closeRequest=pb.CloseRequest(connectID=cid)))
    while not closed:
        p = next_packet()
        if p is None:
            fail("stream ended before CLOSE_RSP", **info)
        if p.type == pb.CLOSE_RSP:
            if p.closeResponse.connectID != cid:
                fail("CLOSE_RSP for %d, not %d" % (p.closeResponse.connectID, cid), **info)
            closed = True
        elif p.type != pb.DATA:
            fail("unexpected %s before CLOSE_RSP" % pb.PacketType.Name(p.type), **info)

    # Half-close; the server then ends the stream (anything still in flight,
    # e.g. an answer to the second CLOSE, is drained).
    outbox.put(None)
    while "stream_end" not in info:
        next_packet()
    channel.close()
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()

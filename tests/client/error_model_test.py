#!/usr/bin/python3
"""Tessera's error model, read as a client in another language reads it.

A Python client built only on Debian's python3-grpcio and python3-protobuf
and on stubs that protoc generated from proto/ (message classes only: the
calls are plain channel.unary_unary, so no grpc_tools is needed) talks to a
real 3-node cluster (tessera-server processes on 127.0.0.1, plaintext peers)
and decodes each error as the standard helpers of gRPC's richer error model
do (Python's grpc_status.rpc_status.from_call, Go's status.FromError,
Java's StatusProto.fromThrowable): the trailing metadata key
`grpc-status-details-bin` holds a google.rpc.Status whose code and message
equal the call's, and whose details are google.protobuf.Any messages
unpacked by type URL. It checks:
  - a Put sent to a follower fails UNAVAILABLE with a tessera.v1.ErrorDetail
    whose not_leader names the leader (node id and client address, reason
    REASON_NOT_LEADER), and the same Put sent to that address succeeds;
  - a request routed to the wrong shard, and one routed by a stale epoch,
    fail FAILED_PRECONDITION with ErrorDetail.stale_route carrying the
    current cluster map (epoch, members, shards);
  - an empty key and an oversized value fail INVALID_ARGUMENT with a
    google.rpc.BadRequest naming the field ("key", "value");
  - a successful call carries no details.
Every process started is stopped by PID, also on failure; every wait is
bounded.

Usage: error_model_test.py TESSERA_SERVER_BINARY PYTHON_STUBS_DIR
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback

SERVER, STUBS = sys.argv[1], sys.argv[2]
sys.path.insert(0, STUBS)

import grpc  # noqa: E402  (python3-grpcio)
from google.rpc import error_details_pb2, status_pb2  # noqa: E402  (generated from proto/)
from tessera import kv_pb2  # noqa: E402  (generated from proto/)

NODES = 3
SHARDS = 4
MAX_VALUE_BYTES = 1024
DETAILS_KEY = "grpc-status-details-bin"


class TestFailure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise TestFailure(message)


# ---- the error model, as a client library implements it ----

def rpc_status_from_call(call):
    """The google.rpc.Status of a finished call, or None: what
    grpc_status.rpc_status.from_call does (same checks)."""
    metadata = call.trailing_metadata()
    if metadata is None:
        return None
    for key, value in metadata:
        if key == DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            if status.code != call.code().value[0]:
                raise ValueError(f"code in Status proto ({status.code}) doesn't match "
                                 f"status code ({call.code()})")
            if status.message != call.details():
                raise ValueError(f"message in Status proto ({status.message!r}) doesn't "
                                 f"match status details ({call.details()!r})")
            return status
    return None


def unpack(status, message_class):
    """The detail of `message_class` in `status`.details (matched by Any type
    URL, "type.googleapis.com/<full name>"), or None."""
    for any_detail in status.details:
        if any_detail.Is(message_class.DESCRIPTOR):
            message = message_class()
            check(any_detail.Unpack(message), f"cannot unpack {any_detail.type_url}")
            return message
    return None


# ---- calls: hand-written unary stubs over the generated messages ----

class Node:
    def __init__(self, address):
        self.address = address
        self.channel = grpc.insecure_channel(address)

        def method(service, name, request_class, response_class):
            return self.channel.unary_unary(
                f"/tessera.v1.{service}/{name}",
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString)

        self.put = method("KV", "Put", kv_pb2.PutRequest, kv_pb2.PutResponse)
        self.get = method("KV", "Get", kv_pb2.GetRequest, kv_pb2.GetResponse)
        self.cluster_map = method("Cluster", "GetClusterMap", kv_pb2.GetClusterMapRequest,
                                  kv_pb2.GetClusterMapResponse)
        self.node_status = method("Cluster", "NodeStatus", kv_pb2.NodeStatusRequest,
                                  kv_pb2.NodeStatusResponse)


def call(method, request, timeout=5):
    """(response, None) on success, (None, failed call) on an error."""
    try:
        response, done = method.with_call(request, timeout=timeout)
        check(rpc_status_from_call(done) is None, "a successful call carries error details")
        return response, None
    except grpc.RpcError as error:  # also a grpc.Call: code(), details(), trailing_metadata()
        return None, error


PROCESSES = []  # every tessera-server started, to stop by PID


def wait_for(what, predicate, seconds):
    deadline = time.monotonic() + seconds
    while True:
        for p in PROCESSES:
            check(p.poll() is None, f"tessera-server pid {p.pid} exited ({p.returncode}) "
                                    f"while waiting for {what}")
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TestFailure(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


# ---- the cluster ----

def reserve_port():
    """A bound, not listening, socket on an OS-chosen 127.0.0.1 port; kept
    open while the servers run (they bind it too, with SO_REUSEADDR) so no
    other process takes it meanwhile."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


def start_cluster(directory, reservations, processes):
    client = [reserve_port() for _ in range(NODES)]
    peer = [reserve_port() for _ in range(NODES)]
    reservations.extend(client + peer)
    addresses = {n: f"127.0.0.1:{client[n - 1].getsockname()[1]}" for n in range(1, NODES + 1)}
    members = ",".join(f"{n}={addresses[n]}/127.0.0.1:{peer[n - 1].getsockname()[1]}"
                       for n in range(1, NODES + 1))
    for n in range(1, NODES + 1):
        log = open(os.path.join(directory, f"node{n}.log"), "ab")
        processes.append(subprocess.Popen(
            [SERVER, f"--node-id={n}", f"--data-dir={directory}/node{n}",
             f"--initial-cluster={members}", f"--shards={SHARDS}", "--tick-ms=20",
             "--election-ticks=10", f"--max-value-bytes={MAX_VALUE_BYTES}",
             "--insecure-peers=true", "--metrics-listen=127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log.close()
    return addresses


def stop(processes):
    for p in processes:
        if p.poll() is None:
            p.kill()  # by PID (os.kill(p.pid, SIGKILL))
    for p in processes:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"pid {p.pid} did not exit within 10 s of SIGKILL", file=sys.stderr)


def current_map(node):
    response, error = call(node.cluster_map, kv_pb2.GetClusterMapRequest())
    return response.map if error is None else None


def all_shards_led(node):
    response, error = call(node.node_status, kv_pb2.NodeStatusRequest(), timeout=2)
    return (error is None and len(response.shards) == SHARDS
            and all(s.leader != 0 for s in response.shards))


# ---- the checks ----

def header(shard, epoch):
    return kv_pb2.RequestHeader(shard=shard, epoch=epoch)


def expect_error(method, request, code, what):
    """Calls; checks it fails with `code`; returns the decoded google.rpc.Status."""
    _, error = call(method, request)
    check(error is not None, f"{what}: succeeded, expected {code}")
    return decode(error, code, what)


def decode(error, code, what):
    """The google.rpc.Status of a call that failed with `code`."""
    check(error.code() == code, f"{what}: got {error.code()} ({error.details()}), expected {code}")
    status = rpc_status_from_call(error)
    check(status is not None, f"{what}: no {DETAILS_KEY} trailer")
    check(status.code == code.value[0] and status.message == error.details(),
          f"{what}: google.rpc.Status {status.code} {status.message!r} differs from the call's")
    return status


def check_stale_route(status, epoch, addresses, what):
    detail = unpack(status, kv_pb2.ErrorDetail)
    check(detail is not None and detail.HasField("stale_route"),
          f"{what}: no ErrorDetail.stale_route in {status}")
    current = detail.stale_route.current
    check(current.epoch == epoch, f"{what}: stale_route epoch {current.epoch}, expected {epoch}")
    check(current.num_shards == SHARDS and len(current.shards) == SHARDS,
          f"{what}: stale_route has {len(current.shards)} shards, expected {SHARDS}")
    got = {m.id: m.client_address for m in current.members}
    check(got == addresses, f"{what}: stale_route members {got}, expected {addresses}")
    check(all(len(s.replicas) == NODES for s in current.shards),
          f"{what}: a shard of the stale_route map has not {NODES} replicas")


def shard_of(node, key, epoch):
    """The shard of `key`, from the server's own answers: every other shard
    is a stale route. (A real client hashes the key: proto/key_hash.h.)"""
    found = []
    for shard in range(SHARDS):
        request = kv_pb2.GetRequest(header=header(shard, epoch), key=key)
        _, error = call(node.get, request)
        if error is None or error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            found.append(shard)
    check(len(found) == 1, f"key {key!r}: {len(found)} shards accept it: {found}")
    return found[0]


def check_not_leader_hint(nodes, addresses, shard, epoch):
    """A Put at a follower: UNAVAILABLE naming the leader; the Put succeeds there."""
    key = b"python-error-model"
    request = kv_pb2.PutRequest(header=header(shard, epoch), key=key, value=b"v")

    def follower_answer():
        cluster_map = current_map(nodes[1])
        leader = cluster_map.shards[shard].leader if cluster_map else 0
        if leader == 0:
            return None
        follower = next(n for n in nodes if n != leader)
        _, error = call(nodes[follower].put, request)
        if error is None:
            return None  # the follower had just become leader: ask again
        status = decode(error, grpc.StatusCode.UNAVAILABLE, f"Put at follower {follower}")
        detail = unpack(status, kv_pb2.ErrorDetail)
        check(detail is not None and detail.HasField("not_leader"),
              f"Put at follower {follower}: no ErrorDetail.not_leader in {status}")
        if detail.not_leader.leader_node == 0:
            return None  # an election is under way: no leader to name yet
        return follower, detail.not_leader

    follower, hint = wait_for("a follower's not-leader answer naming a leader", follower_answer, 20)
    check(hint.reason == kv_pb2.ErrorDetail.NotLeader.REASON_NOT_LEADER,
          f"not_leader reason {hint.reason}, expected REASON_NOT_LEADER")
    check(hint.leader_node != follower, f"follower {follower} names itself as leader")
    check(hint.leader_address == addresses[hint.leader_node],
          f"not_leader address {hint.leader_address!r}, expected {addresses[hint.leader_node]!r} "
          f"(node {hint.leader_node})")
    # Follow the hint, as a client does (at most a few hops if leadership moves).
    address = hint.leader_address
    for _ in range(3):
        by_address = {a: n for n, a in addresses.items()}
        response, error = call(nodes[by_address[address]].put, request)
        if error is None:
            check(response.version >= 1, f"Put at the hinted leader: version {response.version}")
            return
        status = rpc_status_from_call(error)
        detail = unpack(status, kv_pb2.ErrorDetail) if status else None
        check(error.code() == grpc.StatusCode.UNAVAILABLE and detail is not None
              and detail.not_leader.leader_address,
              f"Put at hinted leader {address}: {error.code()} {error.details()}")
        address = detail.not_leader.leader_address
    raise TestFailure("Put did not succeed after following 3 not-leader hints")


def check_bad_request(node, shard, epoch):
    empty = expect_error(node.put, kv_pb2.PutRequest(header=header(shard, epoch), value=b"v"),
                         grpc.StatusCode.INVALID_ARGUMENT, "Put with an empty key")
    bad = unpack(empty, error_details_pb2.BadRequest)
    check(bad is not None and [v.field for v in bad.field_violations] == ["key"],
          f"Put with an empty key: BadRequest {bad}, expected a violation of field 'key'")
    check(unpack(empty, kv_pb2.ErrorDetail) is None, "Put with an empty key: an ErrorDetail too")
    big = expect_error(node.put, kv_pb2.PutRequest(header=header(shard, epoch), key=b"k",
                                                   value=b"x" * (MAX_VALUE_BYTES + 1)),
                       grpc.StatusCode.INVALID_ARGUMENT, "Put of an oversized value")
    bad = unpack(big, error_details_pb2.BadRequest)
    check(bad is not None and [v.field for v in bad.field_violations] == ["value"]
          and bad.field_violations[0].description == big.message,
          f"Put of an oversized value: BadRequest {bad}, expected field 'value'")


def main():
    directory = tempfile.mkdtemp(prefix="tessera-error-model-test.")
    reservations = []
    ok = False
    try:
        addresses = start_cluster(directory, reservations, PROCESSES)
        nodes = {n: Node(a) for n, a in addresses.items()}
        wait_for("a leader for every shard", lambda: all_shards_led(nodes[1]), 30)
        cluster_map = wait_for("the cluster map", lambda: current_map(nodes[1]), 10)
        epoch = cluster_map.epoch
        check(epoch != 0, "cluster map epoch 0")

        key = b"python-error-model"
        shard = shard_of(nodes[1], key, epoch)
        check_not_leader_hint(nodes, addresses, shard, epoch)

        wrong = expect_error(
            nodes[1].put, kv_pb2.PutRequest(header=header((shard + 1) % SHARDS, epoch), key=key),
            grpc.StatusCode.FAILED_PRECONDITION, "Put routed to the wrong shard")
        check_stale_route(wrong, epoch, addresses, "wrong shard")
        stale_epoch = epoch + 1 if epoch + 1 < 2**64 else 1
        stale = expect_error(
            nodes[2].get, kv_pb2.GetRequest(header=header(shard, stale_epoch), key=key),
            grpc.StatusCode.FAILED_PRECONDITION, "Get routed by a stale epoch")
        check_stale_route(stale, epoch, addresses, "stale epoch")

        check_bad_request(nodes[3], shard, epoch)
        ok = True
        print("error_model_test: OK")
    except TestFailure as failure:
        print(f"FAIL: {failure}", file=sys.stderr)
    except Exception:  # e.g. a trailer that is not a google.rpc.Status
        print(f"FAIL:\n{traceback.format_exc()}", file=sys.stderr)
    finally:
        stop(PROCESSES)
        for s in reservations:
            s.close()
        if not ok:
            for n in range(1, NODES + 1):
                path = os.path.join(directory, f"node{n}.log")
                if os.path.exists(path):
                    with open(path, errors="replace") as f:
                        tail = f.readlines()[-15:]
                    print(f"---- node {n} ----\n{''.join(tail)}", file=sys.stderr)
        shutil.rmtree(directory, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

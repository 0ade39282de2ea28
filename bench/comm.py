"""Benchmark 4, communication: bytes a client exchanges per round, as Flower puts them on the wire.

The messages are the real ones: the broadcast is built by ``federation.aggregation.broadcast`` with the
config record of ``federation.algorithm.fedcollm_round`` (the run's YAML under ``CONFIG_KEY`` plus
``server-round``), the reply by ``federation.client_app.client_train`` after one local step.

Flower ≥ 1.20 does not send a message as one protobuf: the message header (metadata + object tree)
travels in ``PushMessages``/``PullMessages``, and its content as content-addressed objects (RecordDict,
ArrayRecord, ConfigRecord, MetricRecord, Array, ArrayChunk), one ``PushObject``/``PullObject`` call each,
identical objects only once. ``wire_bytes`` adds up the serialized size (``ByteSize()``) of every
request and response of that exchange on the fleet API (SuperNode <-> SuperLink), which is what crosses
a client's network link; gRPC/HTTP-2 framing (~9 bytes per 16 KiB frame) is not counted.

Targets: wire bytes ≤ 1.01 × the adapter's raw bytes (sum of array nbytes), in both directions; and the
adapter vs full-model FedAvg (the SLM's parameters in fp32 and bf16). bf16-encoded adapters, and the
adapter packed into one array, are measured the same way as what-ifs.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import numpy as np

from bench.common import Setup, row

NAME = "comm"
RUN_ID, SERVER_NODE, CLIENT_NODE = 0x5EED_0000_0000_0042, 1, 0x7A1F_3C5D_9E2B_4F61  # 64-bit ids, as Flower's


@contextlib.contextmanager
def flower_identity(run_id: int = RUN_ID, node_id: int = SERVER_NODE, task_id: int = 1) -> Iterator[None]:
    """The process identity Flower stamps into message metadata (set by the runtime in a real run)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def wire_bytes(msg, direction: str) -> dict:
    """Fleet-API bytes to move ``msg``: ``down`` = a SuperNode pulls it, ``up`` = a SuperNode pushes it."""
    from flwr.app.message.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.proto import fleet_pb2 as fleet
    from flwr.proto import message_pb2 as obj
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    node, session = Node(node_id=CLIENT_NODE), "s" * 36
    objects = get_all_nested_objects(msg)  # unique by content hash: what Flower actually transfers
    header = message_to_proto(remove_content_from_message(msg))
    tree = get_object_tree(msg)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    if direction == "down":
        envelope = (fleet.PullMessagesRequest(node=node).ByteSize()
                    + fleet.PullMessagesResponse(messages_list=[header], message_object_trees=[tree]).ByteSize())
        calls = sum(obj.PullObjectRequest(node=node, run_id=RUN_ID, object_id=oid).ByteSize()
                    + obj.PullObjectResponse(object_found=True, object_available=True, object_content=c).ByteSize()
                    for oid, c in contents.items())
    else:
        envelope = (fleet.PushMessagesRequest(node=node, messages_list=[header], message_object_trees=[tree],
                                              clientapp_runtime_list=[1.0]).ByteSize()
                    + fleet.PushMessagesResponse(session_id=session, objects_to_push=list(contents)).ByteSize())
        stored = obj.PushObjectResponse(stored=True).ByteSize()
        calls = sum(obj.PushObjectRequest(node=node, run_id=RUN_ID, object_id=oid, object_content=c,
                                          session_id=session).ByteSize() + stored for oid, c in contents.items())
    by_type = Counter()
    for oid, c in contents.items():
        by_type[type(objects[oid]).__name__] += len(c)
    return {"total": envelope + calls, "object_contents": sum(len(c) for c in contents.values()),
            "envelope_and_calls": envelope + calls - sum(len(c) for c in contents.values()),
            "objects": len(contents), "by_object_type": dict(by_type),
            "single_protobuf": message_to_proto(msg).ByteSize()}


def per_array_record(arrays):
    """The layout before packing: one Flower Array per adapter tensor (what Flower's own examples send)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays})


def messages(setup: Setup, clients: int = 4):
    """Real messages of a round: round-1 broadcast, client reply, round-2 broadcast (+ config, θ_k, server SLM)."""
    from flwr.app import ConfigRecord

    from fedcollm.config import dump_config
    from fedcollm.federation import client_app
    from fedcollm.federation.aggregation import broadcast as plain_broadcast
    from fedcollm.federation.client_app import CONFIG_KEY, client_train
    from fedcollm.federation.privacy import PrivacyPolicy
    from fedcollm.federation.wire import from_record, layout_of
    from fedcollm.models.lora import get_adapter_arrays

    cfg = setup.config(f"federation.num_clients={clients}", "federation.local_max_steps=1")
    model, _ = setup.peft("slm")
    theta = get_adapter_arrays(model)
    nodes = [CLIENT_NODE + k for k in range(clients)]

    def broadcast(t: int, arrays):
        config = ConfigRecord({CONFIG_KEY: dump_config(cfg)})
        return plain_broadcast(cfg, PrivacyPolicy.of(cfg, "simulation"), t, nodes, arrays, config)

    with flower_identity():
        first = broadcast(1, theta)
        data = setup.train_questions(cfg.slm.batch_size)
        try:
            reply = client_train(cfg, 0, first[0], data)  # the worker's own SLM copy, one local step
        finally:
            client_app._WORKER.update(key=None, model=None, tokenizer=None)  # free the worker's copy
        theta_k = from_record(reply.content["arrays"], layout_of(theta))
        second = broadcast(2, theta_k)
    return first[0], reply, second[0], cfg, theta_k, model


def run(setup: Setup, clients: int = 4) -> dict:
    from flwr.app import Message, RecordDict

    from fedcollm.federation.wire import payload_bytes
    from fedcollm.models.lora import arrays_nbytes, count_parameters

    down1, up, down2, cfg, theta_k, model = messages(setup, clients)
    raw = arrays_nbytes(theta_k)
    params = count_parameters(model)
    full_fp32, full_bf16 = 4 * params["base"], 2 * params["base"]
    w_down1, w_down2, w_up = wire_bytes(down1, "down"), wire_bytes(down2, "down"), wire_bytes(up, "up")

    def reply_with(record) -> dict:
        with flower_identity():
            content = RecordDict({"arrays": record, "metrics": up.content["metrics"]})
            return wire_bytes(Message(content, reply_to=down1), "up")

    from fedcollm.federation.wire import to_record

    variants = {"bf16 transfer (federation.transfer_dtype)": (reply_with(to_record(theta_k, "bfloat16")), raw // 2),
                "one Array per tensor (before packing)": (reply_with(per_array_record(theta_k)), raw)}
    per_client_round = w_down2["total"] + w_up["total"]
    figures = {
        "adapter": {"arrays": len(theta_k), "parameters": params["trainable"], "raw_bytes_fp32": raw,
                    "share_of_slm_parameters": params["trainable"] / params["base"]},
        "config_yaml_bytes": len(down2.content["config"]["fedcollm-config"]),
        "down_round1_theta_init": w_down1, "down_round2": w_down2, "up": w_up,
        "payload_bytes_metric": {"down": payload_bytes(down2.content), "up": payload_bytes(up.content)},
        "full_model_fedavg_bytes": {"fp32": full_fp32, "bf16": full_bf16},
        "what_if": {k: {**w, "raw_bytes": r, "ratio": w["total"] / r, "vs_fp32_raw": w["total"] / raw}
                    for k, (w, r) in variants.items()},
    }
    rows = [
        row(NAME, "server->client bytes vs raw adapter (round >= 2)", w_down2["total"], raw, w_down2["total"] / raw,
            ("<=", 1.01), "B"),
        row(NAME, "client->server bytes vs raw adapter", w_up["total"], raw, w_up["total"] / raw, ("<=", 1.01), "B"),
        row(NAME, "  round 1 broadcast", w_down1["total"], raw, w_down1["total"] / raw, unit="B"),
        row(NAME, "  project's payload_bytes metric vs wire (up)", payload_bytes(up.content), w_up["total"],
            payload_bytes(up.content) / w_up["total"], unit="B"),
        row(NAME, "per client per round vs full-model FedAvg fp32", per_client_round, 2 * full_fp32,
            per_client_round / (2 * full_fp32), unit="B"),
        row(NAME, "per client per round vs full-model FedAvg bf16", per_client_round, 2 * full_bf16,
            per_client_round / (2 * full_bf16), unit="B"),
    ]
    rows += [row(NAME, f"  what-if {k}: up bytes vs its raw", w["total"], r, w["total"] / r, unit="B")
             for k, (w, r) in variants.items()]
    out = {"rows": rows, "figures": figures}
    if max(w_down2["total"], w_up["total"]) > 1.01 * raw:
        out["profile"] = {"down": overhead(w_down2, raw, len(theta_k)), "up": overhead(w_up, raw, len(theta_k))}
    return out


def overhead(w: dict, raw: int, n_arrays: int) -> dict:
    """Where the bytes above the raw adapter go, in total and per array of the adapter."""
    types = w["by_object_type"]
    parts = {
        "npy headers + chunk object headers": types.get("ArrayChunk", 0) - raw,
        "Array objects (dtype, shape, chunk ids)": types.get("Array", 0),
        "ArrayRecord object (keys + child object ids)": types.get("ArrayRecord", 0),
        "other records (config/metrics, RecordDict, Message)": sum(
            v for k, v in types.items() if k not in ("ArrayChunk", "Array", "ArrayRecord")),
        "protocol (message header, object tree, one request/response per object)": w["envelope_and_calls"],
    }
    return {"total_extra_bytes": w["total"] - raw, "arrays": n_arrays, "objects": w["objects"],
            "extra_bytes_per_array": round((w["total"] - raw) / n_arrays, 1), "parts": parts}

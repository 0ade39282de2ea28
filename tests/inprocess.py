"""An in-process stand-in for Flower's simulation engine: our ServerApp body and ClientApp, no SuperLink, no Ray.

``simulate_in_process`` has ``federation.simulation.simulate``'s signature: tests that check the math of a run
(aggregation, SecAgg+ arithmetic, DP, server optimizers, the update gate, faults, resume) swap it in with the
``in_process`` fixture and run the very functions Flower would run (``algorithm.serve`` on the server side,
``client_app.app`` with all its mods on the client side) in this process, in milliseconds instead of a
SuperLink start, a ``flwr run`` and a Ray cluster per run. A handful of end-to-end tests keep the real path.

``InProcessGrid`` is a ``flwr.serverapp.Grid`` (Flower's public abstract class) whose nodes are ClientApp calls:
each pushed message is delivered as a copy carrying the metadata Flower's runtime gives it (its own message id,
source, destination, group), with a ``Context`` per node that persists across messages (SecAgg+ keeps its
protocol state there), and the reply is copied back, so the two sides share no object, as across processes. A
ClientApp that raises becomes an error reply, as Flower's runtime makes it; the ``exit`` fault, which in a real
worker kills the process, marks the node's worker dead: it and every later message to it get an error reply,
as Flower's simulation does for a worker it does not replace.
"""

from __future__ import annotations

import copy
import random
import traceback
import uuid
from collections.abc import Iterable
from types import SimpleNamespace

from flwr.app import Array, ArrayRecord, Context, Error, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity  # what Flower sets in a ServerApp's process

from fedcollm import faults
from fedcollm.config import Config
from fedcollm.runlog import RunDir

SUPERLINK_NODE_ID = 1  # the source of every instruction message in Flower (flwr.common.constant)
CLIENT_APP_RAISED_EXCEPTION = 2  # Flower's ErrorCode for a ClientApp that raised


class WorkerDied(BaseException):
    """Raised where a real client worker would ``os._exit``: the in-process node dies instead of the test."""


class InProcessGrid(Grid):
    """K simulated nodes, each a ``ClientApp`` call in this process (see the module docstring)."""

    def __init__(self, app: ClientApp, num_nodes: int, seed: int = 0, status: str = "") -> None:
        rng = random.Random(seed)  # Flower's simulation gives its nodes random 64-bit ids
        self.app, self.status = app, status
        self.partition = {rng.getrandbits(63) | 1 << 40: k for k in range(num_nodes)}
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": k, "num-partitions": num_nodes},
                                    state=RecordDict(), run_config={}) for n, k in self.partition.items()}
        self.replies: dict[str, Message] = {}
        self.dead: set[int] = set()
        self.gone: set[int] = set()  # nodes that left the federation (no longer listed)
        self.delivered: list[Message] = []  # every instruction message as its node received it
        self.at: int | None = None  # the partition whose ClientApp runs now (None: the server's code)
        self._run = SimpleNamespace(run_id=1)

    # --- Grid's abstract interface ------------------------------------------------------------------------
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.partition if n not in self.gone]

    def get_nodes(self):
        return [SimpleNamespace(node_id=n, status=self.status) for n in self.get_node_ids()]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            ids.append(mid)
            md = msg.metadata
            meta = Metadata(run_id=self._run.run_id, message_id=mid, src_node_id=SUPERLINK_NODE_ID,
                            dst_node_id=md.dst_node_id, reply_to_message_id="", group_id=md.group_id,
                            created_at=md.created_at, ttl=md.ttl, message_type=md.message_type)
            delivered = Message(metadata=meta, content=copy_content(msg.content))
            self.delivered.append(delivered)
            if md.dst_node_id in self.gone:
                continue  # no reply ever: the caller's timeout decides
            reply = self._deliver(delivered)
            if reply.has_error():
                self.replies[mid] = Message(metadata=copy.copy(reply.metadata), error=reply.error)
            else:
                self.replies[mid] = Message(metadata=copy.copy(reply.metadata), content=copy_content(reply.content))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # --- the node side --------------------------------------------------------------------------------------
    def _deliver(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        if node in self.dead:
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason="the client's worker died"), reply_to=msg)
        self.at = self.partition[node]
        try:
            return self.app(msg, self.contexts[node])
        except WorkerDied:
            self.dead.add(node)
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason="the client's worker died"), reply_to=msg)
        except Exception as exc:  # what Flower's runtime does with a ClientApp that raises
            reason = f"{type(exc)}:<'{exc}'>\n{traceback.format_exc(limit=2)}"
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        finally:
            self.at = None


class Spy:
    """A Grid wrapped to keep what reaches the server in every reply: each array, and every list of bytes in a
    config record decoded as arrays (SecAgg+ carries its masked vectors that way, as ``masked_params``)."""

    def __init__(self, grid) -> None:
        self.grid = grid
        self.arrays: list = []
        self.masked: list[list] = []  # per reply of the collect_masked_vectors stage: [factor, vector, ...]

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def pull_messages(self, message_ids):
        from flwr.common import bytes_to_ndarray

        replies = list(self.grid.pull_messages(message_ids))
        for r in replies:
            if r.has_error():
                continue
            for record in r.content.array_records.values():
                self.arrays.extend(a.numpy() for a in record.values())
            for record in r.content.config_records.values():
                if MASKED_PARAMETERS in record:
                    self.masked.append([bytes_to_ndarray(b) for b in record[MASKED_PARAMETERS]])
        return replies


MASKED_PARAMETERS = "masked_params"  # Flower's SecAgg+ key (secaggplus_constants.Key.MASKED_PARAMETERS)


def copy_content(content: RecordDict) -> RecordDict:
    """A copy of a message's records that shares no object or buffer with it (what crossing processes gives)."""
    out = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            out[key] = ArrayRecord({k: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=bytes(a.data))
                                    for k, a in record.items()})
        else:  # ConfigRecord, MetricRecord: scalars, strings, bytes and lists of them
            out[key] = type(record)(copy.deepcopy(dict(record)))
    return out


def _exit_kills_the_node(kind: str | None, real=faults.before_training) -> None:
    if kind == "exit":
        raise WorkerDied
    real(kind)


def simulate_in_process(cfg: Config, run: RunDir, progress: bool = True, app_dir=None, grid_hook=None) -> None:
    """``federation.simulation.simulate`` in this process: ``serve`` over an ``InProcessGrid``.

    ``grid_hook(grid)`` may wrap or inspect the grid first (a spy, a node that leaves)."""
    from fedcollm.federation import client_app
    from fedcollm.federation.algorithm import serve
    from fedcollm.federation.server_app import raise_failure

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    grid = InProcessGrid(client_app.app, cfg.federation.num_clients, seed=cfg.seed)
    client_app._WORKER.update(key=None, model=None, tokenizer=None, loads=0)  # a fresh worker, as each run has
    before = faults.before_training
    faults.before_training = _exit_kills_the_node
    try:
        serve(grid if grid_hook is None else grid_hook(grid), cfg, run, "simulation", progress=progress)
    finally:
        faults.before_training = before
    raise_failure(run)

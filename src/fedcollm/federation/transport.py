"""The one module that talks to Flower's Grid and Messages on the server.

- ``MeteredGrid``: every exchange of a round (plain or SecAgg+) goes through it: it counts the bytes
  to and from each node, shows the replies coming in, and records who dropped where;
- membership: ``online_nodes`` / ``connected_nodes`` (who is there, waiting for them to connect);
- ``sample_clients``: the round's clients, drawn with its own seeded generator;
- ``train_messages``: a plain round's broadcast.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from .secagg import SECAGG_CONFIGS, SECAGG_STAGE
from .wire import payload_bytes

log = logging.getLogger(__name__)
ONLINE = "online"  # a deployment node's status while the SuperLink receives its heartbeats


_HOST_DETAIL = (re.compile(r"\b(pid|ip|node_ip|node_id|worker_id|actor_id|hostname|host)(=|: ?)[^\s,)]+", re.I),
                re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"))


def redact(reason: str) -> str:
    """A client's error line with its process and host details (pids, addresses, Ray's worker ids) blanked: the
    run's metrics say why a client dropped, never where it runs."""
    reason = _HOST_DETAIL[0].sub(lambda m: f"{m.group(1)}{m.group(2)}…", reason)
    return _HOST_DETAIL[1].sub("<address>", reason)


class MeteredGrid:
    """The server's Grid, counting the bytes of every message to and from each node, and who dropped where.

    Every protocol stage goes through ``send_and_receive``, so a client's total here is what it cost on
    the wire (SecAgg+'s key and share exchanges included). ``dropped`` names each node that replied with
    an error or not at all, with the stage it was in (``train`` for a plain round, else the SecAgg+
    stage: ``setup``, ``share_keys``, ``collect_masked_vectors`` or ``unmask``) and why.
    """

    def __init__(self, grid: Grid, progress: bool = False, round_no: int | None = None) -> None:
        self._grid = grid
        self.sent: Counter[int] = Counter()
        self.received: Counter[int] = Counter()
        self.dropped: dict[int, Drop] = {}
        self.progress, self.round_no = progress, round_no

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        stage = {}
        for m in messages:
            self.sent[m.metadata.dst_node_id] += payload_bytes(m.content)
            stage[m.metadata.dst_node_id] = stage_of(m)
        replies = self._exchange(messages, timeout)
        for r in replies:
            node = r.metadata.src_node_id
            if r.has_error():
                why = r.error.reason.strip().splitlines()[-1] if r.error.reason.strip() else "error reply"
                self.dropped.setdefault(node, Drop(node, stage.get(node, "train"), redact(why)[:300]))
            else:
                self.received[node] += payload_bytes(r.content)
        for n in stage.keys() - {r.metadata.src_node_id for r in replies}:
            self.dropped.setdefault(n, Drop(n, stage[n], f"no reply within {timeout} s"))
        return replies


    def _exchange(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Flower's push, then pull until every message has its reply or ``timeout`` passes (what the Grid's own
        ``send_and_receive`` does), with a line that counts the replies as they come: a round of many minutes
        shows its clients finishing (replied k of K, the examples they trained, an ETA) instead of silence."""
        waiting = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        stage = stage_of(messages[0]) if messages else "train"
        where = f"round {self.round_no} " if self.round_no is not None else ""
        bar = tqdm(total=len(waiting), desc=f"{where}{stage}: clients replied", unit="client", leave=False,
                   disable=not self.progress or not waiting)
        replies: list[Message] = []
        examples = 0
        while waiting and (end is None or time.monotonic() < end):
            got = list(self._grid.pull_messages(list(waiting)))
            for r in got:
                waiting.discard(r.metadata.reply_to_message_id)
                if not r.has_error() and "metrics" in r.content.metric_records:
                    examples += int(r.content["metrics"].get("num-examples", 0))
            if got:
                replies += got
                bar.update(len(got))
                if examples:
                    bar.set_postfix(examples=examples)
            if waiting:
                time.sleep(PULL_INTERVAL_S)
        bar.close()
        return replies


PULL_INTERVAL_S = 0.2  # how often the replies are polled (Flower's own Grids poll every 0.1-1 s)


@dataclass(frozen=True)
class Drop:
    """A node that stopped answering in a round: where (the protocol stage) and why (its error, or silence)."""

    node: int
    stage: str
    reason: str


def stage_of(message: Message) -> str:
    """The protocol stage a message belongs to: its SecAgg+ stage, or ``train`` for a plain train message."""
    secure = message.content.config_records.get(SECAGG_CONFIGS)
    return str(secure[SECAGG_STAGE]) if secure is not None and SECAGG_STAGE in secure else "train"


def online_nodes(grid: Grid) -> list[int]:
    """Node ids the SuperLink sees alive (its heartbeat marks a killed SuperNode offline; simulated nodes
    carry no status and are always there)."""
    return sorted(n.node_id for n in grid.get_nodes() if getattr(n, "status", "") in ("", ONLINE))


def connected_nodes(grid: Grid, want: int, at_least: int, wait_s: float) -> list[int]:
    """The node ids to train this round: all ``want`` once connected, else (after ``wait_s``) those there."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = online_nodes(grid)
        if len(nodes) >= want:
            return nodes
        if time.monotonic() >= deadline:
            if len(nodes) >= at_least:
                log.warning("%d of %d clients connected after %.0f s: training with those", len(nodes), want, wait_s)
                return nodes
            raise RuntimeError(f"only {len(nodes)} clients connected within {wait_s:.0f} s; "
                               f"federation.min_clients is {at_least}")
        time.sleep(0.5)


def sample_clients(online: list[int], n: int, seed: int) -> list[int]:
    """The round's clients: ``n`` of the ``online`` nodes drawn uniformly without replacement, or all of
    them when there are no more than ``n``.

    The draw is a function of (seed, round) and the node ids alone: its own generator, seeded per round,
    over the sorted ids (not the order the SuperLink lists them). A deployment's node ids persist, so a
    rerun samples the same nodes; Flower's simulation gives its nodes fresh random ids in every process,
    so there a rerun samples other (equally uniform) sets of clients.
    """
    if n >= len(online):
        return sorted(online)
    return sorted(random.Random(seed).sample(sorted(online), n))


def train_messages(nodes: list[int], content: RecordDict) -> list[Message]:
    """Step 1 of a plain round: the same train message (θ^t and the round's config) to every node."""
    return [Message(content=content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]

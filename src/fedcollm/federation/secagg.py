"""Secure aggregation (step 3 of Algorithm 1) with Flower's SecAgg+ workflow and client mod.

Flower 1.42 ships SecAgg+ only for its legacy fit API: ``SecAggPlusWorkflow`` drives a legacy
``Strategy`` and sends ``fitins.*`` records; ``secaggplus_mod`` reads ``fitres.*`` replies. Our apps
speak the Message API (``arrays``/``config`` in, ``arrays``/``metrics`` out). This module is the thin
bridge, so the protocol itself stays Flower's:

- client: ``secagg_mod`` runs Flower's ``secaggplus_mod`` only on SecAgg+ messages (plain rounds pass
  through), and ``legacy_fit_mod`` translates ``fitins`` → our train message and our reply → ``fitres``;
- server: ``secure_train_round`` runs the workflow for one round and returns the unmasked weighted
  mean. The strategy below it receives results whose parameters Flower has already replaced by that
  aggregate: no server-side object ever holds one client's unmasked adapter.

``DropTolerantSecAggPlus`` fixes one gap of the stock workflow: a client lost during setup or key
sharing (stages 0-1) made the unmask stage fail for want of its shares, although such a client never
entered anyone's masks. Dropouts in training (stage 2) are recovered by the protocol itself.

It is the one module of the project that uses names outside Flower's public API, each because the
legacy workflow offers no public way to do the same thing:

- ``flwr.compat.common.recorddict_compat`` (``fitres_to_recorddict``, ``parameters_to_arrayrecord``):
  the legacy ``FitRes``/``Parameters`` <-> record encoding that ``secaggplus_mod`` and the workflow read;
- ``flwr.server.compat.grid_client_proxy.GridClientProxy`` and ``flwr.server.compat.legacy_context.
  LegacyContext``: how a legacy strategy names its targets and how the workflow receives its state;
- ``flwr.server.workflow.constant`` (``MAIN_PARAMS_RECORD``, ``MAIN_CONFIGS_RECORD``, ``Key.CURRENT_ROUND``):
  where the workflow reads the round's parameters and number from that state;
- ``flwr.common.secure_aggregation.secaggplus_constants`` (``RECORD_KEY_CONFIGS``, ``Key.STAGE``): which
  messages are SecAgg+ ones, and in which stage;
- ``SecAggPlusWorkflow.share_keys_stage`` (overridden), its state's ``active_node_ids``,
  ``sampled_node_ids`` and ``nid_to_neighbours``, and ``_check_threshold``: the drop-tolerance fix above.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from .. import faults
from ..config import SecAggSection
from .privacy import client_weight

log = logging.getLogger(__name__)
NAMES_KEY = "fedcollm-array-names"  # legacy Parameters carry no names: they travel in the config
SECAGG_CONFIGS = RECORD_KEY_CONFIGS  # the record Flower's SecAgg+ messages carry ("secaggplus_configs")
SECAGG_STAGE = SecAggKey.STAGE  # its key naming the protocol stage (setup, share_keys, ...)


# ----------------------------------------------------------------------------------------------- client
def secagg_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ rounds only (it would refuse a plain train message)."""
    if SECAGG_CONFIGS in msg.content.config_records:
        stage = str(msg.content.config_records[SECAGG_CONFIGS][SECAGG_STAGE])
        faults.in_secagg_stage(int(ctxt.node_config.get("partition-id", -1)), int(msg.metadata.group_id or 0), stage)
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def legacy_fit_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """``fitins.*`` → ``arrays`` + ``config`` for our train handler; its reply → ``fitres.*`` for SecAgg+."""
    if msg.metadata.message_type != MessageType.TRAIN or "fitins.parameters" not in msg.content:
        return call_next(msg, ctxt)
    config = dict(msg.content.config_records["fitins.config"])
    names = list(config.pop(NAMES_KEY))
    legacy = msg.content.array_records["fitins.parameters"]  # keys "0", "1", ... in order
    msg.content = RecordDict({"arrays": ArrayRecord(OrderedDict(zip(names, legacy.values(), strict=True))),
                              "config": ConfigRecord(config)})
    out = call_next(msg, ctxt)
    if out.has_error():
        return out
    metrics = dict(out.content["metrics"])
    weight = client_weight(config, int(metrics["num-examples"]))  # SecAgg+ weighs the masked sum by it
    fitres = FitRes(status=Status(code=Code.OK, message="ok"),
                    parameters=ndarrays_to_parameters([a.numpy() for a in out.content["arrays"].values()]),
                    num_examples=weight, metrics=metrics)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# ----------------------------------------------------------------------------------------------- server
class DropTolerantSecAggPlus(SecAggPlusWorkflow):
    """SecAgg+ that also survives clients lost before their masks exist (setup, key sharing)."""

    def share_keys_stage(self, grid, context, state) -> bool:  # type: ignore[override]
        ok = super().share_keys_stage(grid, context, state)
        alive = set(state.active_node_ids)
        state.sampled_node_ids = alive
        state.nid_to_neighbours = {n: nb & alive for n, nb in state.nid_to_neighbours.items() if n in alive}
        return ok and self._check_threshold(state)


class _RoundTargets(Strategy):
    """The legacy strategy the workflow needs: it targets our nodes and receives the aggregate.

    By the time ``aggregate_fit`` runs, Flower has put the unmasked aggregate into every result's
    ``parameters`` (the clients' own vectors were masked and are gone).
    """

    def __init__(self, grid: Grid, node_ids: Iterable[int], config: dict) -> None:
        self.grid, self.node_ids, self.config = grid, list(node_ids), config
        self.results: list[tuple] = []
        self.failures: list = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        run_id = self.grid.run.run_id
        return [(GridClientProxy(n, self.grid, run_id), FitIns(parameters, dict(self.config))) for n in self.node_ids]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = results, failures
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


@dataclass
class SecureRound:
    """What one SecAgg+ round gives the server: the mean and each survivor's plaintext metrics only."""

    aggregate: ArrayRecord | None
    metrics: list[tuple[int, dict]] = field(default_factory=list)  # (node id, metrics incl. num-examples)


def workflow(sec: SecAggSection, max_weight: float) -> DropTolerantSecAggPlus:
    return DropTolerantSecAggPlus(num_shares=float(sec.num_shares),
                                  reconstruction_threshold=float(sec.reconstruction_threshold),
                                  max_weight=float(max_weight), clipping_range=float(sec.clipping_range),
                                  quantization_range=int(sec.quantization_range), timeout=sec.timeout)


def secure_train_round(grid: Grid, node_ids: Iterable[int], arrays: ArrayRecord, config: ConfigRecord,
                       server_round: int, wf: SecAggPlusWorkflow) -> SecureRound:
    """Broadcast ``arrays`` and ``config`` to ``node_ids``, train, unmask Σ n_k x_k / Σ n_k with SecAgg+."""
    names = list(arrays.keys())
    ref = [a.numpy() for a in arrays.values()]
    cfg = {**dict(config), NAMES_KEY: names, "server-round": server_round}
    targets = _RoundTargets(grid, node_ids, cfg)
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    legacy = LegacyContext(context=context, strategy=targets, client_manager=SimpleClientManager())
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(ref), keep_input=True)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    wf(grid, legacy)  # on a halt Flower logs why and never calls aggregate_fit
    if not targets.results:
        return SecureRound(None)
    mean = parameters_to_ndarrays(targets.results[0][1].parameters)
    aggregate = ArrayRecord({k: Array(np.asarray(v, dtype=r.dtype).reshape(r.shape))
                             for k, v, r in zip(names, mean, ref, strict=True)})
    metrics = [(proxy.node_id, dict(res.metrics)) for proxy, res in targets.results]  # num-examples included
    return SecureRound(aggregate, metrics)

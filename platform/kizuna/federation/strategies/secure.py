"""``secure`` mode: one round of Flower's SecAgg+ workflow; the server learns only the mean.

Flower 1.41 ships SecAgg+ as a workflow over its compat layer (``LegacyContext`` and a
``Strategy``). Kizuna drives its own round loop, so this module hands the workflow one
round at a time and a small strategy that only selects the devices and receives the
aggregate. Devices weigh 1 (``max_weight = 1``) and the quantization range equals the
clipping norm: an honest clipped update is never clipped again, and a dishonest device
can move each coordinate of the sum by at most ``C``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from kizuna.federation.config import FederationConfig
from kizuna.federation.strategies.outcome import RoundOutcome
from kizuna.federation.updates import AdapterLayout

log = logging.getLogger(__name__)


class _RoundStrategy(Strategy):
    """Selects every registered device and keeps the aggregate SecAgg+ hands back."""

    def __init__(self, config: dict[str, Scalar]) -> None:
        self.config = config
        self.aggregate: NDArrays | None = None
        self.participants = 0

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Unused: parameters come from the round."""
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Every device gets the current adapter and the round's instructions."""
        return [(proxy, FitIns(parameters, self.config)) for proxy in client_manager.all().values()]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """SecAgg+ has put the unmasked mean into every result's parameters."""
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
            self.participants = len(results)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No federated evaluation: candidates are evaluated by the retrain job."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Unused."""
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Unused."""
        return None


def secure_round(
    grid: Grid,
    context: Context,
    node_ids: Sequence[int],
    weights: NDArrays,
    instructions: dict[str, Scalar],
    *,
    round_number: int,
    layout: AdapterLayout,
    config: FederationConfig,
) -> RoundOutcome:
    """Run SecAgg+ over ``node_ids``; the outcome holds the mean of surviving devices."""
    strategy = _RoundStrategy(instructions)
    manager = SimpleClientManager()
    for node_id in node_ids:
        manager.register(GridClientProxy(node_id, grid, context.run_id))
    legacy = LegacyContext(context, strategy=strategy, client_manager=manager)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: round_number}
    )
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(weights), keep_input=True
    )
    workflow = SecAggPlusWorkflow(
        num_shares=config.share_fraction,
        reconstruction_threshold=config.reconstruction_threshold,
        max_weight=1.0,
        clipping_range=config.clipping_norm,
        quantization_range=config.quantization_range,
        timeout=config.stage_timeout_s,
    )
    workflow(grid, legacy)
    del legacy.state.array_records[MAIN_PARAMS_RECORD]
    if strategy.aggregate is None:
        return RoundOutcome(
            aggregate=None,
            participants=0,
            note="SecAgg+ halted: too few devices stayed for the reconstruction threshold",
        )
    aggregate = [array.astype("float32") for array in strategy.aggregate]
    problem = layout.problem(aggregate, max_norm=None)
    if problem is not None:
        return RoundOutcome(aggregate=None, participants=0, note=f"invalid aggregate: {problem}")
    dropped = len(node_ids) - strategy.participants
    return RoundOutcome(
        aggregate=aggregate,
        participants=strategy.participants,
        note=f"{dropped} devices dropped out" if dropped else "",
    )


__all__ = ["ArrayRecord", "secure_round"]

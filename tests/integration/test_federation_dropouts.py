"""A SecAgg+ round that loses too many devices stops cleanly and the next round runs; a
round whose devices fail once is played again and completes (Flower's Simulation
Runtime, Kizuna's ServerApp logic and ClientApp, tiny model)."""

from pathlib import Path

import pytest
from flwr.app import Context, Message
from flwr.compat.common import recorddict_compat as compat

from kizuna.config import Settings
from kizuna.federation.client_app import INSTRUCTIONS_KEY, train
from kizuna.federation.config import FederationConfig
from kizuna.federation.simulation import Handler, simulate
from kizuna.federation.task import RoundInstructions
from kizuna.store.db import open_store
from kizuna.store.models import Adapter, Run
from kizuna.store.runs import rounds_of
from support import tsundere_devices

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _most_devices_drop_in_round_one(msg: Message, context: Context) -> Message:
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    instructions = RoundInstructions.decode(str(fitins.config[INSTRUCTIONS_KEY]))
    if instructions.round == 1 and int(context.node_config["partition-id"]) > 0:
        raise ConnectionError("the device lost its connection while training")
    return train(msg, context)


def _on_three_devices(
    settings: Settings, tmp_path: Path, config: FederationConfig, handler: Handler
) -> Adapter:
    """``config``'s rounds on three simulated devices whose messages ``handler`` answers."""
    devices = tsundere_devices(settings, tmp_path / "devices", count=3, interactions=8)
    return simulate(config, settings, devices_root=devices[0].parent, devices=3, handler=handler)


def test_a_round_below_the_threshold_stops_and_the_next_one_runs(
    bootstrapped: Settings, tmp_path: Path
) -> None:
    settings = bootstrapped
    config = FederationConfig(
        persona="tsundere", rounds=2, mode="secure", local_steps=1, round_attempts=1
    )
    candidate = _on_three_devices(settings, tmp_path, config, _most_devices_drop_in_round_one)
    with open_store(settings.resolved_database_url)() as session:
        run = session.get(Run, candidate.lineage["run_id"])
        assert run is not None
        first, second = rounds_of(session, run_id=run.id)
    assert not first.details["completed"] and first.participants == 0
    assert "SecAgg+ halted" in first.details["note"]
    assert first.epsilon == 0.0  # nothing was released, nothing was spent
    assert second.details["completed"] and second.participants == 3
    assert candidate.lineage["rounds"] == [2]
    assert candidate.lineage["epsilon"] == pytest.approx(second.epsilon)


def test_a_round_whose_devices_fail_once_is_played_again(
    bootstrapped: Settings, tmp_path: Path
) -> None:
    failed = tmp_path / "failed-once"  # devices run in Ray workers: a file is shared state

    def fail_the_first_attempt(msg: Message, context: Context) -> Message:
        marker = failed / str(context.node_config["partition-id"])
        if int(context.node_config["partition-id"]) > 0 and not marker.exists():
            marker.parent.mkdir(exist_ok=True)
            marker.touch()
            raise ConnectionError("the device lost its connection while training")
        return train(msg, context)

    config = FederationConfig(persona="tsundere", rounds=1, mode="robust", local_steps=1)
    candidate = _on_three_devices(bootstrapped, tmp_path, config, fail_the_first_attempt)
    with open_store(bootstrapped.resolved_database_url)() as session:
        (only,) = rounds_of(session, run_id=candidate.lineage["run_id"])
    assert only.details["completed"] and only.details["attempts"] == 2
    assert only.participants == 3 and candidate.lineage["rounds"] == [1]

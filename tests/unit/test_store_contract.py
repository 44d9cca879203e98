"""One contract for the store, run on SQLite and on a real PostgreSQL server."""

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kizuna.store import adapters, datasets, devices, interactions, runs
from kizuna.store.db import alembic_config, current_revision, transaction
from kizuna.store.models import Adapter, AdapterStatus, Base, RunKind, RunPhase


def _record(**overrides) -> interactions.InteractionRecord:
    values = dict(
        public_id=str(uuid.uuid4()),
        request_text="I can help you.",
        output_text="Hmph, fine.",
        strength=0.8,
        adapter_versions={"tsundere": 1},
        token_entropies=[0.5, 1.5, 1.0],
        latency_ms=120.0,
        persona="tsundere",
        consent=True,
        device_id="dev-1",
    )
    return interactions.InteractionRecord(**{**values, **overrides})


class TestSchema:
    def test_migrations_reach_head_and_match_the_models(self, engine: Engine) -> None:
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        assert current_revision(engine) == head
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
        assert {
            "interactions",
            "adapters",
            "datasets",
            "dataset_rows",
            "runs",
            "federated_rounds",
            "labelling_picks",
            "devices",
        } <= set(inspect(engine).get_table_names())


class TestAdapters:
    def test_versions_count_up_per_persona(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            versions = [
                adapters.register_adapter(
                    s, persona=p, artifact_url="file:///a", sha256="0" * 64
                ).version
                for p in ("cool", "cool", "sly", "cool")
            ]
        assert versions == [1, 2, 1, 3]

    def test_promoting_retires_the_previous_stable(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            adapters.register_adapter(
                s,
                persona="cool",
                artifact_url="u1",
                sha256="a" * 64,
                status=AdapterStatus.STABLE,
                lineage={"source": "bootstrap"},
            )
            adapters.register_adapter(s, persona="cool", artifact_url="u2", sha256="b" * 64)
        with transaction(sessions) as s:
            adapters.set_status(s, persona="cool", version=2, status=AdapterStatus.STABLE)
        with sessions() as s:
            assert adapters.stable_adapter(s, persona="cool").version == 2
            assert adapters.resolve_adapter(s, persona="cool").version == 2
            assert adapters.resolve_adapter(s, persona="cool", version=1).version == 1
            assert (
                adapters.get_adapter(s, persona="cool", version=1).status == AdapterStatus.RETIRED
            )
            assert adapters.get_adapter(s, persona="cool", version=1).lineage == {
                "source": "bootstrap"
            }
            assert [a.version for a in adapters.list_adapters(s, persona="cool")] == [1, 2]

    def test_the_database_itself_refuses_two_stable_versions(
        self, sessions: sessionmaker[Session]
    ) -> None:
        with transaction(sessions) as s:
            adapters.register_adapter(
                s, persona="sly", artifact_url="u", sha256="a" * 64, status=AdapterStatus.STABLE
            )
        with pytest.raises(IntegrityError), transaction(sessions) as s:
            s.add(
                Adapter(
                    persona="sly",
                    version=2,
                    status=AdapterStatus.STABLE,
                    artifact_url="u",
                    sha256="b" * 64,
                )
            )
        with sessions() as s:  # the failed write left the registry as it was
            assert [a.version for a in adapters.list_adapters(s, persona="sly")] == [1]

    def test_missing_adapters_are_clear_errors(self, sessions: sessionmaker[Session]) -> None:
        with sessions() as s:
            with pytest.raises(adapters.AdapterNotFoundError, match="kizuna bootstrap"):
                adapters.stable_adapter(s, persona="cool")
            with pytest.raises(adapters.AdapterNotFoundError, match="version 9"):
                adapters.get_adapter(s, persona="cool", version=9)


class TestInteractions:
    def test_logging_keeps_entropies_and_summaries(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            row = interactions.log_interaction(
                s, record=_record(mix={"tsundere": 0.7, "airhead": 0.3})
            )
        with sessions() as s:
            stored = interactions.recent_interactions(s, limit=1)[0]
        assert stored.id == row.id
        assert stored.token_entropies == [0.5, 1.5, 1.0]
        assert stored.entropy_mean == pytest.approx(1.0) and stored.entropy_max == 1.5
        assert stored.mix == {"tsundere": 0.7, "airhead": 0.3}
        assert stored.created_at.tzinfo is not None

    def test_a_repeated_public_id_is_logged_once(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            first = interactions.log_interaction(s, record=_record(public_id="k-1"))
        with transaction(sessions) as s:
            again = interactions.log_interaction(
                s, record=_record(public_id="k-1", output_text="x")
            )
            interactions.log_interaction(s, record=_record())
        assert again.id == first.id
        with sessions() as s:
            assert interactions.count_interactions(s) == 2
            assert interactions.count_interactions(s, persona="tsundere") == 2
            assert interactions.count_interactions(s, persona="cool") == 0

    def test_feedback(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            key = interactions.log_interaction(s, record=_record()).public_id
        with transaction(sessions) as s:
            interactions.set_feedback(s, public_id=key, thumbs_up=False)
        with sessions() as s:
            assert interactions.recent_interactions(s)[0].feedback == -1
            with pytest.raises(LookupError):
                interactions.set_feedback(s, public_id="missing", thumbs_up=True)

    def test_unlabelled_consented_skips_refusals_and_labelled_rows(
        self, sessions: sessionmaker[Session]
    ) -> None:
        with transaction(sessions) as s:
            kept = interactions.log_interaction(s, record=_record()).id
            interactions.log_interaction(s, record=_record(consent=False))
            labelled = interactions.log_interaction(s, record=_record()).id
            other = interactions.log_interaction(s, record=_record(persona="cool")).id
            row = datasets.RowRecord(input="a", target="b", source_interaction_id=labelled)
            datasets.create_dataset_version(s, name="al", rows=[row])
        with sessions() as s:
            ids = [i.id for i in interactions.unlabelled_consented(s)]
            assert ids == [kept, other]
            assert [i.id for i in interactions.unlabelled_consented(s, persona="cool")] == [other]
            assert interactions.unlabelled_consented(s, after_id=other) == []

    def test_unicode_round_trips(self, sessions: sessionmaker[Session]) -> None:
        text = "哼，才不是为了你呢！\u202e😀 e\u0301"
        with transaction(sessions) as s:
            interactions.log_interaction(s, record=_record(request_text=text))
        with sessions() as s:
            assert interactions.recent_interactions(s)[0].request_text == text


class TestDatasets:
    def test_versions_are_immutable_and_keep_provenance(
        self, sessions: sessionmaker[Session]
    ) -> None:
        with transaction(sessions) as s:
            source = interactions.log_interaction(s, record=_record()).id
            rows = [
                datasets.RowRecord(
                    input="a",
                    target="b",
                    metadata={"personality": "cool"},
                    source_interaction_id=source,
                ),
                datasets.RowRecord(input="c", target="d", split="test"),
            ]
            first = datasets.create_dataset_version(
                s, name="al-cool", rows=rows, persona="cool", provenance={"teacher": "rules"}
            )
            second = datasets.create_dataset_version(s, name="al-cool", rows=rows[:1])
        assert (first.version, second.version) == (1, 2)
        with sessions() as s:
            latest = datasets.get_dataset(s, name="al-cool")
            assert latest.version == 2 and latest.row_count == 1
            v1 = datasets.get_dataset(s, name="al-cool", version=1)
            assert v1.provenance == {"teacher": "rules"}
            train = datasets.dataset_rows(s, dataset_id=v1.id, split="train")
            assert [(r.input, r.source_interaction_id) for r in train] == [("a", source)]
            assert train[0].row_metadata == {"personality": "cool"}
            with pytest.raises(LookupError):
                datasets.get_dataset(s, name="nope")


class TestRuns:
    def test_phases_set_timestamps_and_metrics_merge(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            run_id = runs.create_run(
                s, kind=RunKind.RETRAIN, persona="cool", config={"steps": 3}
            ).id
        with transaction(sessions) as s:
            runs.update_run(
                s, run_id=run_id, phase=RunPhase.RUNNING, progress=0.5, metrics={"loss": 1.0}
            )
            runs.update_run(s, run_id=run_id, metrics={"tokens_per_s": 9.0}, progress=7)
        with transaction(sessions) as s:
            run = runs.update_run(s, run_id=run_id, phase=RunPhase.SUCCEEDED)
        assert run.metrics == {"loss": 1.0, "tokens_per_s": 9.0}
        assert run.progress == 1.0
        assert run.started_at is not None and run.finished_at is not None
        with pytest.raises(ValueError, match="already succeeded"), transaction(sessions) as s:
            runs.update_run(s, run_id=run_id, phase=RunPhase.RUNNING)
        with sessions() as s:
            assert [r.id for r in runs.list_runs(s, kind=RunKind.RETRAIN, persona="cool")] == [
                run_id
            ]
            assert runs.list_runs(s, kind=RunKind.FEDERATED) == []

    def test_only_a_failed_run_reopens_to_resume(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            failed = runs.create_run(s, kind=RunKind.FEDERATED, persona="cool").id
            done = runs.create_run(s, kind=RunKind.FEDERATED, persona="cool").id
            runs.update_run(s, run_id=failed, phase=RunPhase.FAILED, message="stopped")
            runs.update_run(s, run_id=done, phase=RunPhase.SUCCEEDED)
        with transaction(sessions) as s:
            run = runs.reopen_run(s, run_id=failed)
            assert (run.phase, run.finished_at) == (RunPhase.PENDING, None)
            runs.update_run(s, run_id=failed, phase=RunPhase.RUNNING)
        with pytest.raises(ValueError, match="only a failed run"), transaction(sessions) as s:
            runs.reopen_run(s, run_id=done)

    def test_federated_rounds(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            run_id = runs.create_run(s, kind=RunKind.FEDERATED, persona="sly").id
            for number in (2, 1):
                runs.record_round(
                    s,
                    run_id=run_id,
                    round_number=number,
                    participants=4,
                    update_norms=[0.1, 0.2],
                    epsilon=0.5 * number,
                    rejected=[{"device_id": "d9", "reason": "nan"}],
                )
        with sessions() as s:
            recorded = runs.rounds_of(s, run_id=run_id)
        assert [r.round_number for r in recorded] == [1, 2]
        assert recorded[0].rejected == [{"device_id": "d9", "reason": "nan"}]
        with pytest.raises(IntegrityError), transaction(sessions) as s:
            runs.record_round(s, run_id=run_id, round_number=1, participants=1, update_norms=[])


class TestDevices:
    def test_tokens_are_stored_hashed_and_authenticate(
        self, sessions: sessionmaker[Session]
    ) -> None:
        with transaction(sessions) as s:
            token = devices.register_device(s, device_id="gadget-7")
        with transaction(sessions) as s:
            assert devices.authenticate_device(s, token=token) == "gadget-7"
            assert devices.authenticate_device(s, token=token + "x") is None
            from kizuna.store.models import Device

            assert token not in s.get(Device, "gadget-7").token_sha256

    def test_rotating_a_token_revokes_the_old_one(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as s:
            old = devices.register_device(s, device_id="gadget-8")
        with transaction(sessions) as s:
            new = devices.register_device(s, device_id="gadget-8")
        with transaction(sessions) as s:
            assert devices.authenticate_device(s, token=old) is None
            assert devices.authenticate_device(s, token=new) == "gadget-8"

"""The per-project round state machine (project/driver.py) against an in-memory Label Studio, with the real (tiny)
engine."""

from __future__ import annotations

import numpy as np
import pytest

from ovaal_backend.backend.client import LabelStudioError
from ovaal_backend.backend.convert import LabelConfigError, decode_brush, percent_to_pixel
from ovaal_backend.backend.jobs import InProcessJobs
from ovaal_backend.backend.project.context import known_projects, remap_points
from ovaal_backend.backend.project.driver import ProjectDriver, ProjectMismatchError
from ovaal_backend.backend.project.state import Phase
from ovaal_backend.backend.validate import parse_project_uid
from ovaal_backend.backend.worker import ProjectWorker
from ovaal_backend.config import IGNORE_INDEX
from tests.helpers.annotator import answer_keypoints
from tests.helpers.fake_label_studio import (
    CLASSES,
    UID,
    XML,
    P,
    add_scenes,
    answer_round,
    drain,
    started,
    tiny_config,
)
from tests.helpers.synthetic import make_scene


@pytest.fixture
def truth(fake) -> dict[int, np.ndarray]:
    return add_scenes(fake, 3)


def queried_pixels(task: dict) -> set[tuple[int, int]]:
    out = set()
    for region in task["predictions"][0]["result"]:
        col, row = percent_to_pixel(region["value"]["x"], region["value"]["y"], region["original_width"],
                                    region["original_height"])
        out.add((row, col))
    return out


# --------------------------------------------------------------------------- the whole loop

def test_full_loop_round0_round1_final(tmp_path, fake, truth):
    driver = started(tmp_path, fake, semi=True)  # the OVAAL+ phase, off by default
    assert driver.phase == Phase.QUERYING and driver.state().round == 0

    # Round 0: one query task per source image, random pixels pre-labelled "ignore", no model yet.
    round0 = fake.query_tasks(P, 0)
    assert sorted(t["data"]["ovaal_source_task"] for t in round0) == sorted(truth)
    for task in round0:
        assert task["data"]["image"] == fake.tasks[task["data"]["ovaal_source_task"]]["data"]["image"]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "ovaal-0" and prediction["score"] == pytest.approx(0.0)
        assert len(prediction["result"]) == 5
        assert {r["value"]["keypointlabels"][0] for r in prediction["result"]} == {"ignore"}
        assert all(r["value"]["width"] == pytest.approx(0.6) for r in prediction["result"])
    assert fake.projects[P]["sampling"] == "Uncertainty sampling"
    assert fake.projects[P]["model_version"] == "ovaal-0"
    assert all(not t["predictions"] for t in fake.source_tasks(P))  # no model, no masks

    answer_round(fake, driver, truth, 0)
    drain(driver)

    # Training happened: version 1, round 1 queries chosen by the model, dense masks on every source task.
    state = driver.state()
    assert state.phase == Phase.QUERYING and state.round == 1 and driver.model_version == "ovaal-1"
    assert fake.projects[P]["model_version"] == "ovaal-1"
    assert (driver.root / "model.pt").is_file()
    round1 = fake.query_tasks(P, 1)
    assert len(round1) == 3
    for task in round1:
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "ovaal-1" and 0.0 <= prediction["score"] <= 1.0
        labels = {r["value"]["keypointlabels"][0] for r in prediction["result"]}
        assert labels <= set(CLASSES)  # pre-labelled with the model's guess
        assert {r["query_class"] for r in prediction["result"]} <= set(CLASSES)
        source = task["data"]["ovaal_source_task"]
        old = next(t for t in round0 if t["data"]["ovaal_source_task"] == source)
        assert not queried_pixels(task) & queried_pixels(old)  # never a labelled pixel
    for source, label in truth.items():
        (mask,) = fake.predictions_of(source, "ovaal-1")
        assert mask["score"] == 1.0
        union = np.zeros(label.shape, dtype=int)
        for region in mask["result"]:
            assert region["from_name"] == "mask" and region["value"]["brushlabels"][0] in CLASSES
            union += decode_brush(region)
        assert (union == 1).all()  # one class per pixel, at the real image size

    answer_round(fake, driver, truth, 1)
    drain(driver)

    # Budget spent: final (semi-supervised) training, final masks, no more queries.
    state = driver.state()
    assert state.phase == Phase.DONE and driver.model_version == "ovaal-2"
    assert fake.query_tasks(P, 2) == []
    assert driver.metrics()["trainings"][-1]["final"] and driver.metrics()["trainings"][-1]["semi"]
    assert all(len(fake.predictions_of(s, "ovaal-2")) == 1 for s in truth)
    assert fake.projects[P]["model_version"] == "ovaal-2"
    counts = driver.store.clicks.counts()
    assert counts["annotations"] == 6 and counts["points"] == 3 * (5 + 6)


def test_pixelpick_design_runs_the_same_loop(tmp_path, fake, truth):
    # The README's alternative for scenes unlike the pool: PixelPick's softmax, margin selection, plain loss.
    driver = started(tmp_path, fake, classifier="multiclass", selection="margin", class_balance=0.0)
    answer_round(fake, driver, truth, 0)
    drain(driver)
    assert driver.state().round == 1 and driver.model_version == "ovaal-1"
    for task in fake.query_tasks(P, 1):
        (prediction,) = task["predictions"]
        assert len(prediction["result"]) == 6 and 0.0 <= prediction["score"] <= 1.0
        assert {r["value"]["keypointlabels"][0] for r in prediction["result"]} <= set(CLASSES)
    assert all(len(fake.predictions_of(s, "ovaal-1")) == 1 for s in truth)  # dense masks too


def test_start_waits_for_source_tasks_then_tasks_created_starts(tmp_path, fake):
    driver = started(tmp_path, fake)
    assert driver.phase == Phase.NEW and fake.query_tasks(P, 0) == []
    image, _ = make_scene(np.random.default_rng(1))
    fake.add_image_task(P, image, "late")
    driver.add_event("TASKS_CREATED", {"tasks": [{"id": 99}]})
    drain(driver)
    assert driver.phase == Phase.QUERYING and len(fake.query_tasks(P, 0)) == 1


def test_same_delivery_twice_changes_nothing(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    (payload,) = answer_round(fake, driver, truth, 0, only=1)
    driver.add_event(payload["action"], payload)
    drain(driver)
    assert driver.store.clicks.counts()["annotations"] == 1
    assert driver.state().new_annotations == 1
    points = driver.store.clicks.labelled_points()
    assert sum(len(p) for p in points.values()) == 5


def test_skipped_tasks_count_as_answered_and_store_nothing(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    answer_round(fake, driver, truth, 0, cancelled=True)
    drain(driver)
    # The round ended, but with no click there is nothing to train: round 1 is random again, same version.
    assert driver.store.clicks.counts() == {"annotations": 3, "cancelled": 3, "points": 0, "ignored_points": 0}
    assert driver.phase == Phase.QUERYING and driver.state().round == 1 and driver.model_version == "ovaal-0"
    assert len(fake.query_tasks(P, 1)) == 3


def test_update_and_delete(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    (payload,) = answer_round(fake, driver, truth, 0, only=1)
    drain(driver)
    updated = dict(payload, action="ANNOTATION_UPDATED")
    updated["annotation"] = dict(payload["annotation"], result=payload["annotation"]["result"][:2])
    driver.add_event("ANNOTATION_UPDATED", updated)
    drain(driver)
    assert driver.store.clicks.counts()["points"] == 2
    driver.add_event("ANNOTATIONS_DELETED", {"annotations": [{"id": payload["annotation"]["id"]}]})
    drain(driver)
    assert driver.store.clicks.counts()["annotations"] == 0
    assert driver.phase == Phase.QUERYING and driver.state().round == 0


def test_start_training_ends_the_round_early(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    answer_round(fake, driver, truth, 0, only=1)
    driver.add_event("START_TRAINING", {"project": {"id": P}})
    drain(driver)
    assert driver.state().round == 1 and driver.model_version == "ovaal-1"
    assert driver.metrics()["trainings"][-1]["images"] == 1


def test_train_after_annotations(tmp_path, fake, truth):
    driver = started(tmp_path, fake, train_after_annotations=2)
    answer_round(fake, driver, truth, 0, only=1)
    drain(driver)
    assert driver.state().round == 0
    task = fake.query_tasks(P, 0)[1]
    result = answer_keypoints(task["predictions"][0]["result"], truth[task["data"]["ovaal_source_task"]], CLASSES)
    payload = fake.annotate(task["id"], result)
    driver.add_event(payload["action"], payload)
    drain(driver)
    assert driver.state().round == 1 and driver.model_version == "ovaal-1"


def test_keypoints_on_source_tasks_count_brush_is_ignored(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    source = next(iter(truth))
    keypoint = {"id": "s1", "from_name": "query", "to_name": "image", "type": "keypointlabels",
                "original_width": 64, "original_height": 48,
                "value": {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["disc"]}}
    brush = {"id": "b1", "from_name": "mask", "to_name": "image", "type": "brushlabels",
             "original_width": 64, "original_height": 48,
             "value": {"format": "rle", "rle": [0, 0], "brushlabels": ["square"]}}
    payload = fake.annotate(source, [keypoint, brush])
    driver.add_event(payload["action"], payload)
    drain(driver)
    points = driver.store.clicks.labelled_points()
    assert points[source].tolist() == [[24, 32, CLASSES.index("disc")]]


def test_predict_source_and_query_tasks_in_order(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    sources = [fake.tasks[s] for s in truth]
    query = fake.query_tasks(P, 0)[0]
    before = driver.predict([sources[0], query, sources[1]])
    assert [r["model_version"] for r in before] == ["ovaal-0"] * 3
    assert before[0] == {"result": [], "score": 0.0, "model_version": "ovaal-0"}
    assert before[1]["result"] == query["predictions"][0]["result"]
    answer_round(fake, driver, truth, 0)
    drain(driver)
    after = driver.predict([{"id": query["id"], "data": {}}, sources[2]])
    assert after[0]["result"] == query["predictions"][0]["result"] and after[0]["model_version"] == "ovaal-1"
    regions = after[1]["result"]
    assert regions and all(decode_brush(r).shape == truth[sources[2]["id"]].shape for r in regions)
    assert after[1]["score"] == 1.0 and after[1]["model_version"] == "ovaal-1"


def test_setup_validates_the_label_config_and_project(tmp_path, fake):
    driver = ProjectDriver(tiny_config(tmp_path), P, fake)
    no_ignore = XML.replace('<Label value="ignore" ovaal="ignore"/>', "")
    with pytest.raises(LabelConfigError, match='<Label value="ignore" ovaal="ignore"/>'):
        driver.setup(UID, no_ignore)
    with pytest.raises(LabelConfigError):
        driver.setup(UID, "<View>")
    driver.setup(UID, XML)
    with pytest.raises(ProjectMismatchError, match="re-created"):
        driver.setup("1.1800000000", XML)
    assert parse_project_uid("12.345") == (12, "12.345") and parse_project_uid(7) == (7, "7")
    with pytest.raises(ValueError):
        parse_project_uid("abc")


def test_project_version_is_set_back_after_label_studio_changes_it(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    fake.projects[P]["model_version"] = "ovaal"  # what connecting a model does to a project without a version
    driver.ctx.update(check_project_at=0.0)
    assert driver.needs_step()
    drain(driver)
    assert fake.projects[P]["model_version"] == "ovaal-0"
    assert driver.state().check_project_at is None


def test_basic_auth_header_is_added_to_our_webhook_only(tmp_path, fake, truth):
    fake.connect_backend(P, "http://ovaal:9090", basic_auth_user="ls")
    fake.connect_backend(P, "http://other:9090", basic_auth_user="someone-else")
    fake.connect_backend(P, "http://twin:9090", basic_auth_user="ls")  # another backend, the same user name
    driver = started(tmp_path, fake, basic_auth_user="ls", basic_auth_pass="pw")
    driver.setup(UID, XML, host="OVAAL:9090")  # Label Studio's /setup call reached us at ovaal:9090
    driver.ctx.update(check_project_at=0.0)
    drain(driver)
    ours, other, twin = fake.projects[P]["webhooks"]
    assert ours["headers"] == {"Authorization": "Basic bHM6cHc="} and other["headers"] == twin["headers"] == {}
    calls = len(fake.calls)
    driver.ctx.update(check_project_at=0.0)
    drain(driver)
    assert not [c for c in fake.calls[calls:] if c[0] == "update_webhook"]  # already right: left alone


# --------------------------------------------------------------------------- restart recovery

def test_restart_replays_pending_events_and_resumes(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    answer_round(fake, driver, truth, 0)  # stored as events, never processed: the process "dies" here
    assert known_projects(driver.config) == [P]
    again = ProjectDriver(tiny_config(tmp_path), P, fake)
    assert len(again.store.events.pending()) == 3
    drain(again)
    assert again.model_version == "ovaal-1" and again.state().round == 1
    assert again.store.events.pending() == []


def test_restart_during_publish_resumes_without_duplicates(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    answer_round(fake, driver, truth, 0)
    fake.fail_next["import_predictions"] = LabelStudioError("Label Studio went away")
    assert not ProjectWorker(driver).run_pending()  # the mask push failed after the queries were imported
    assert driver.phase == "publishing"
    again = ProjectDriver(tiny_config(tmp_path), P, fake)
    drain(again)
    assert again.phase == Phase.QUERYING and len(fake.query_tasks(P, 1)) == 3
    assert all(len(fake.predictions_of(s, "ovaal-1")) == 1 for s in truth)


def test_lost_import_answer_adopts_the_created_tasks(tmp_path, fake, truth):
    driver = ProjectDriver(tiny_config(tmp_path), P, fake)
    driver.setup(UID, XML)
    fake.fail_after["import_tasks"] = LabelStudioError("read timed out")  # created in LS, answer lost
    assert not ProjectWorker(driver).run_pending()
    drain(driver)
    assert len(fake.query_tasks(P, 0)) == 3
    assert set(driver.store.rounds.query_tasks(0)) == {t["id"] for t in fake.query_tasks(P, 0)}
    assert driver.predict([fake.query_tasks(P, 0)[0]])[0]["result"]


def test_lost_import_waits_for_a_slow_label_studio_before_importing_again(tmp_path, fake, truth):
    driver = ProjectDriver(tiny_config(tmp_path), P, fake)
    driver.setup(UID, XML)
    fake.fail_next["import_tasks"] = LabelStudioError("read timed out")  # not in Label Studio (yet)
    worker = ProjectWorker(driver)
    assert not worker.run_pending()
    assert not worker.run_pending()  # Label Studio may still create them: the rows wait, nothing is sent again
    assert fake.query_tasks(P, 0) == [] and [c[0] for c in fake.calls].count("import_tasks") == 1
    driver.publisher._late_until = 0.0  # twice LABEL_STUDIO_TIMEOUT later
    drain(driver)
    assert len(fake.query_tasks(P, 0)) == 3


def test_weights_saved_before_a_crash_are_used(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    answer_round(fake, driver, truth, 0)
    drain(driver)
    trainings = len(driver.metrics()["trainings"])
    # Pretend the process died after saving the checkpoint of version 1 but before recording it.
    saved = dict(driver.state().to_dict(), version=0, phase="training", training_round=0, final=False, round=0)
    driver.store.state.save(saved)
    again = ProjectDriver(tiny_config(tmp_path), P, fake)
    again.step()
    assert again.model_version == "ovaal-1" and len(again.metrics()["trainings"]) == trainings


@pytest.mark.parametrize("changes", [{"classifier": "ova-softmax"},
                                     {"classifier": "multiclass", "selection": "margin"}])
def test_a_changed_classifier_serves_the_trained_model_until_the_next_round_trains_a_new_one(tmp_path, fake, truth,
                                                                                          changes):
    """CLASSIFIER changed between two runs of the backend: /predict still serves the model trained before (no
    error), and the next round trains a new model of the kind now asked for, on every stored click."""
    driver = started(tmp_path, fake)
    answer_round(fake, driver, truth, 0)
    drain(driver)
    source = fake.tasks[next(iter(truth))]
    unstored = dict(source, id=999)  # no stored mask: a forward pass of the served model
    before = driver.predict([unstored])[0]
    again = ProjectDriver(tiny_config(tmp_path, **changes), P, fake)
    assert again.predict([unstored])[0] == before
    answer_round(fake, again, truth, 1)
    drain(again)
    state = again.state()
    assert again.model_version == "ovaal-2" and not state.failed_job and state.phase == "done"
    assert again.ctx.model.read_checkpoint()["learner"]["kind"] == changes["classifier"]
    assert len(again.predict([unstored])[0]["result"]) > 0


def test_round_fields_change_only_through_events(tmp_path, fake):
    driver = ProjectDriver(tiny_config(tmp_path), P, fake)
    with pytest.raises(AttributeError, match="ProjectContext.apply"):
        driver.ctx.update(phase=Phase.DONE)
    driver.ctx.update(query_view_id=5)  # bookkeeping: what the backend remembers of Label Studio
    assert driver.state().phase is Phase.NEW
    assert ProjectDriver(tiny_config(tmp_path), P, fake).state().query_view_id == 5  # saved


def test_resync_recovers_lost_webhooks(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    first, second = answer_round(fake, driver, truth, 0, only=2)
    drain(driver)
    # Then Label Studio loses touch: a new annotation and a deletion whose webhooks never arrive.
    task = fake.query_tasks(P, 0)[2]
    source = task["data"]["ovaal_source_task"]
    fake.annotate(task["id"], answer_keypoints(task["predictions"][0]["result"], truth[source], CLASSES))
    fake.tasks[first["task"]["id"]]["annotations"].clear()
    assert driver.resync() == (2, 1)
    drain(driver)
    stored = driver.store.clicks.annotation_ids()
    assert stored == {second["annotation"]["id"], fake.tasks[task["id"]]["annotations"][0]["id"]}
    assert driver.resync() == (2, 0)  # a second resync changes nothing
    drain(driver)
    assert driver.store.clicks.annotation_ids() == stored


# --------------------------------------------------------------------------- label config changes

def test_class_change_remaps_clicks_by_name_and_starts_a_new_generation(tmp_path, fake, truth):
    driver = started(tmp_path, fake, rounds=2)
    answer_round(fake, driver, truth, 0)
    drain(driver)
    assert driver.model_version == "ovaal-1"
    before = driver.ctx.points_by_source()
    changed = """<View><Image name="image" value="$image"/>
      <KeyPointLabels name="query" toName="image"><Label value="square"/><Label value="background"/>
        <Label value="triangle"/><Label value="ignore"/></KeyPointLabels>
      <BrushLabels name="mask" toName="image"><Label value="square"/><Label value="background"/>
        <Label value="triangle"/></BrushLabels></View>"""
    fake.projects[P]["label_config"] = changed  # what the admin saved in Label Studio
    assert driver.setup(UID, changed) == "ovaal-1"
    drain(driver)
    state = driver.state()
    assert state.classes == ["square", "background", "triangle"] and state.generation == 1
    assert state.label_names == ["background", "square", "disc", "triangle"]
    after = driver.ctx.points_by_source()
    for source, table in before.items():
        expected = {0: 1, 1: 0, 2: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX}  # by name; disc was removed
        assert after[source][:, 2].tolist() == [expected[v] for v in table[:, 2].tolist()]
    # The open round ended; a fresh model of the new class list was trained on the remapped clicks.
    assert driver.model_version == "ovaal-2" and state.round == 2
    assert driver.metrics()["trainings"][-1]["generation"] == 1
    checkpoint = driver.ctx.model.read_checkpoint()
    assert checkpoint["classes"] == ["square", "background", "triangle"] and checkpoint["generation"] == 1
    labels = {r["value"]["brushlabels"][0] for s in truth for r in fake.predictions_of(s, "ovaal-2")[0]["result"]}
    assert labels <= {"square", "background", "triangle"}


def test_backend_url_names_our_webhook(tmp_path, fake, truth):
    """Behind a proxy that rewrites Host, BACKEND_URL says which ML backend entry is this backend."""
    fake.connect_backend(P, "https://ml.example.org/ovaal/", basic_auth_user="ls")
    fake.connect_backend(P, "https://ml.example.org/twin", basic_auth_user="ls")
    driver = started(tmp_path, fake, basic_auth_user="ls", basic_auth_pass="pw",
                     backend_url="https://ml.example.org/ovaal")
    driver.setup(UID, XML, host="ml.example.org")  # both entries have this host: the Host alone cannot tell
    driver.ctx.update(check_project_at=0.0)
    drain(driver)
    ours, twin = fake.projects[P]["webhooks"]
    assert ours["headers"] == {"Authorization": "Basic bHM6cHc="} and twin["headers"] == {}


CHANGED = """<View><Image name="image" value="$image"/>
  <KeyPointLabels name="query" toName="image"><Label value="square"/><Label value="background"/>
    <Label value="triangle"/><Label value="ignore"/></KeyPointLabels>
  <BrushLabels name="mask" toName="image"><Label value="square"/><Label value="background"/>
    <Label value="triangle"/></BrushLabels></View>"""
"""The fake project's label config after an admin reordered its classes and replaced disc by triangle."""


def mask_labels(fake, sources, version: str) -> set[str]:
    """Every class name in the dense-mask predictions of ``version`` on the source tasks."""
    return {r["value"]["brushlabels"][0] for s in sources for p in fake.predictions_of(s, version)
            for r in p["result"]}


def test_a_result_made_before_a_class_change_is_never_published(tmp_path, fake, truth):
    """The classes change after round 1's job was recorded, before its masks and queries reach Label Studio: none of
    it is published under the new names; a model of the new classes is trained and published instead."""
    driver = started(tmp_path, fake, rounds=2)
    answer_round(fake, driver, truth, 0)
    driver.process_events()
    while driver.phase != Phase.PUBLISHING:  # round 0 ends, its job trains ovaal-1 and is recorded
        assert driver.step()
    fake.projects[P]["label_config"] = CHANGED
    driver.setup(UID, CHANGED)
    drain(driver)
    state = driver.state()
    assert state.classes == ["square", "background", "triangle"] and state.generation == 1
    assert all(fake.predictions_of(s, "ovaal-1") == [] for s in truth)  # old masks: never published
    assert fake.query_tasks(P, 1) == []  # old round-1 queries: never imported
    assert driver.model_version == "ovaal-2" and mask_labels(fake, truth, "ovaal-2") <= set(state.classes)
    assert [t["generation"] for t in driver.metrics()["trainings"]] == [0, 1]
    assert {q["predictions"][0]["model_version"] for q in fake.query_tasks(P, 2)} == {"ovaal-2"}


def test_a_job_that_trained_on_old_classes_runs_again(tmp_path, fake, truth):
    """The classes change while the round job runs (a queue worker trains, the backend applies the event): its
    result carries the old class list and is dropped; the job runs again with the new classes."""
    driver = started(tmp_path, fake, rounds=2)
    answer_round(fake, driver, truth, 0)
    runs = []

    class ChangingJobs(InProcessJobs):
        def run(self, job, project=""):
            result = super().run(job, project)
            runs.append(list(result.classes))
            if len(runs) == 1:
                driver.events.apply_label_config(CHANGED)
            return result

    driver.jobs = ChangingJobs()
    drain(driver)
    assert runs == [CLASSES, ["square", "background", "triangle"]]
    assert driver.model_version == "ovaal-1" and driver.state().generation == 1
    assert [t["generation"] for t in driver.metrics()["trainings"]] == [1]
    assert mask_labels(fake, truth, "ovaal-1") <= {"square", "background", "triangle"}
    assert driver.ctx.model.read_checkpoint()["classes"] == ["square", "background", "triangle"]


def test_unusable_new_label_config_keeps_the_old_one(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    broken = "<View><Image name='i' value='$i'/></View>"
    driver.add_event("PROJECT_UPDATED", {"project": {"id": P, "label_config": broken}})
    drain(driver)
    assert driver.state().classes == CLASSES and driver.phase == Phase.QUERYING


def test_remap_points_keeps_ignore():
    points = {3: np.array([[0, 0, 0], [0, 1, 1], [0, 2, IGNORE_INDEX]])}
    out = remap_points(points, ["a", "b"], ["b"])
    assert out[3][:, 2].tolist() == [IGNORE_INDEX, 0, IGNORE_INDEX]
    assert points[3][:, 2].tolist() == [0, 1, IGNORE_INDEX]  # the input is not changed


def test_predict_serves_the_stored_mask_and_computes_only_the_others(tmp_path, fake, truth):
    """/predict of a source task answers with the mask the round job wrote for the current version (no forward pass:
    it works with the weights gone), the very result pushed to Label Studio; an image without one is computed."""
    driver = started(tmp_path, fake)
    answer_round(fake, driver, truth, 0)
    drain(driver)
    sources = [fake.tasks[s] for s in truth]
    pushed = [fake.predictions_of(t["id"], "ovaal-1")[0]["result"] for t in sources]
    assert [r["result"] for r in driver.predict(sources)] == pushed
    computed = driver.predict([dict(sources[0], id=999)])[0]  # same image, a task without a stored mask
    assert [decode_brush(r).tolist() for r in computed["result"]] == [decode_brush(r).tolist() for r in pushed[0]]
    driver.ctx.model.path.unlink()  # no weights any more: only stored masks can answer
    restarted = ProjectDriver(tiny_config(tmp_path), P, fake)
    assert restarted.predict(sources) == [{"result": r, "score": 1.0, "model_version": "ovaal-1"} for r in pushed]
    assert restarted.predict([dict(sources[0], id=999)])[0]["result"] == []  # no stored mask, no model
    assert sorted(p.name for p in (driver.ctx.root / "masks").iterdir()) == ["ovaal-1"]

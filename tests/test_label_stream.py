"""The label stream's leftovers: the backend's own Data Manager tab, stale query tasks of an ended round, cleanup."""

from __future__ import annotations

import numpy as np
import pytest

from ovaal_backend.backend.cleanup import clean_project
from ovaal_backend.backend.project.state import QUERY_VIEW_TITLE
from tests.helpers.fake_label_studio import P, add_scenes, answer_round, drain, started


@pytest.fixture
def truth(fake) -> dict[int, np.ndarray]:
    return add_scenes(fake, 3)


def test_the_query_tab_is_added_once_and_again_when_deleted(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    driver.ctx.update(check_project_at=0.0)
    drain(driver)
    (view,) = fake.projects[P]["views"]
    assert view["data"]["title"] == QUERY_VIEW_TITLE
    assert view["data"]["filters"]["items"][0]["filter"] == "filter:tasks:data.ovaal_query"
    assert view["data"]["ordering"] == ["tasks:predictions_score"]  # least certain first
    driver.ctx.update(check_project_at=0.0)
    drain(driver)
    assert len(fake.projects[P]["views"]) == 1
    fake.delete_view(view["id"])
    driver.ctx.update(check_project_at=0.0)
    drain(driver)
    assert [v["data"]["title"] for v in fake.projects[P]["views"]] == [QUERY_VIEW_TITLE]


def test_unanswered_query_tasks_of_an_ended_round_are_removed(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    answered = answer_round(fake, driver, truth, 0, only=1)[0]["annotation"]["task"]
    driver.add_event("START_TRAINING", {"project": {"id": P}})
    drain(driver)
    assert driver.state().round == 1
    assert [t["id"] for t in fake.query_tasks(P, 0)] == [answered]  # the other two are gone, the answer stays
    assert len(fake.query_tasks(P, 1)) == 3
    assert driver.store.clicks.counts()["annotations"] == 1


def test_cleanup_removes_everything_the_backend_wrote(tmp_path, fake, truth):
    driver = started(tmp_path, fake)
    driver.ctx.update(check_project_at=0.0)
    answer_round(fake, driver, truth, 0)
    drain(driver)
    fake._add_prediction(min(truth), {"result": [], "model_version": "someone-else"})
    assert fake.query_tasks(P, 1) and any(p["model_version"] == "ovaal-1" for t in fake.source_tasks(P)
                                           for p in t["predictions"])
    removed = clean_project(fake, P)
    assert removed["query_tasks"] == 6 and removed["predictions"] == 3 and removed["views"] == 1
    assert fake.query_tasks(P, 0) == [] and fake.query_tasks(P, 1) == [] and fake.projects[P].get("views") == []
    assert [p["model_version"] for t in fake.source_tasks(P) for p in t["predictions"]] == ["someone-else"]
    assert fake.projects[P]["sampling"] == "Sequential sampling" and fake.projects[P]["model_version"] == ""


def test_setup_trusts_label_studios_label_config_over_the_request(tmp_path, fake, truth):
    forged = fake.projects[P]["label_config"].replace('name="query"', 'name="forged"')
    driver = started(tmp_path, fake)
    assert driver.setup("1.1700000000", forged) == "ovaal-0"
    drain(driver)
    assert driver.ctx.parsed_config.query_from_name == "query"  # Label Studio's control names, so predictions are kept
    assert driver.state().label_config == fake.projects[P]["label_config"]


def test_label_studio_unreachable_delays_the_setup_event_instead_of_dropping_it(tmp_path, fake, truth):
    from ovaal_backend.backend.client import LabelStudioError

    driver = started(tmp_path, fake)
    fake.fail_next["get_project"] = LabelStudioError("GET /api/projects/1 failed: connection refused")
    driver.setup("1.1700000000", fake.projects[P]["label_config"].replace('name="query"', 'name="other"'))
    driver.process_events()
    assert len(driver.store.events.pending()) == 1 and not driver.metrics()["quarantined"]["events"]

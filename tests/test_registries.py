"""Every registry of names keeps one contract (as smp's encoder tests): each registered name works, the settings
accept exactly its names, and an unknown name fails with a message that lists the valid ones.

One test class per registry, built from the contracts that apply (``SettingContract`` when a setting takes its names,
``LookupContract`` when a function finds an entry by name); ``check`` says what "works" means for one entry.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch

from ovaal_backend.cli import build_parser
from ovaal_backend.config import (
    CLASSIFIERS,
    ENGINE_CHOICES,
    LR_SCHEDULES,
    MULTICLASS_SCORERS,
    RANDOM_SELECTION,
    SELECTIONS,
    SEMI_RULES,
    SEMI_TEACHERS,
    TRAIN_PROFILES,
    Config,
    ConfigError,
    EngineConfig,
)
from ovaal_backend.engine.classifiers import get_classifier_kind
from ovaal_backend.engine.pseudo_labels import refine_pseudo_labels
from ovaal_backend.engine.scorers import SCORERS, get_scorer
from ovaal_backend.engine.train import build_schedule
from ovaal_backend.engine.weights import WEIGHT_SOURCES, WeightsUnavailableError, load_encoder_weights
from ovaal_backend.simulator.flags import (
    FLAG_HELP,
    FLAG_NAMES,
    SIMULATE_NO_FLAG,
    simulate_flag_fields,
    simulation_config,
)
from ovaal_backend.simulator.presets import METHODS, PRESETS

UNKNOWN = "no-such-name"


class RegistryContract:
    """What every registry promises. Subclasses set ``registry`` and write ``check``."""

    registry: Mapping[str, Any]

    def check(self, name: str, entry: Any) -> None:
        raise NotImplementedError

    def test_every_registered_name_works(self) -> None:
        assert self.registry, "an empty registry"
        for name, entry in self.registry.items():
            self.check(name, entry)

    def test_names_are_lower_case(self) -> None:
        assert all(name == name.lower() and name.strip() == name for name in self.registry)


class SettingContract(RegistryContract):
    """A registry whose names are the valid values of the Config field ``setting``."""

    setting: str

    def test_the_setting_takes_every_name_and_lists_them_for_an_unknown_one(self) -> None:
        for name in self.registry:
            assert getattr(Config(**{self.setting: name}), self.setting) == name
        with pytest.raises(ConfigError) as err:
            Config(**{self.setting: UNKNOWN})
        assert self.setting in str(err.value) and all(name in str(err.value) for name in self.registry)


class LookupContract(RegistryContract):
    """A registry with a function that finds an entry by name."""

    lookup: Callable[[str], Any]

    def test_an_unknown_name_lists_the_valid_ones(self) -> None:
        with pytest.raises(ValueError) as err:
            type(self).lookup(UNKNOWN)
        assert UNKNOWN in str(err.value) and all(name in str(err.value) for name in self.registry)


class TestScorers(LookupContract):
    registry = SCORERS
    lookup = get_scorer

    def check(self, name: str, entry: Any) -> None:
        probs = torch.rand(2, 3, 4, 5).softmax(1)
        scores = entry.score(probs)
        assert scores.shape == ((2, 3, 4, 5) if entry.per_class else (2, 4, 5)) and torch.isfinite(scores).all()
        # the most uncertain answer: each binary head at 0.5 (per class), or a uniform class distribution
        undecided = entry.score(torch.full((1, 3, 1, 1), 0.5 if entry.per_class else 1 / 3)).max()
        assert undecided >= scores.max() - 1e-6, f"{name}: an undecided model must score highest"
        if entry.other_half is not None:  # half per class, half by a scorer of the class distribution
            assert entry.per_class and not get_scorer(entry.other_half).per_class

    def test_selections_are_the_scorers_and_random(self) -> None:
        assert SELECTIONS == (*SCORERS, RANDOM_SELECTION)
        assert MULTICLASS_SCORERS == ("margin", "entropy", "least-confidence")
        for name in SELECTIONS:
            assert Config(selection=name).selection == name
        with pytest.raises(ConfigError, match="selection=.*random"):
            Config(selection=UNKNOWN)


class TestClassifiers(SettingContract, LookupContract):
    registry = CLASSIFIERS
    setting = "classifier"
    lookup = get_classifier_kind

    def check(self, name: str, entry: Any) -> None:
        logits = torch.randn(2, 3 * entry.outputs_per_class, 4, 5)
        probs, decision = entry.probabilities(logits), entry.decision_probabilities(logits)
        for p in (probs, decision):
            assert p.shape == (2, 3, 4, 5) and ((p >= 0) & (p <= 1)).all()
        heads = logits[:, :3]
        expected = torch.sigmoid(heads) if entry.ova else torch.softmax(heads, dim=1)
        assert torch.allclose(probs, expected)
        assert torch.allclose(decision.sum(1), torch.ones(2, 4, 5), atol=1e-5) or entry.decides_by_ova
        assert not entry.separate or entry.ova, "separate binary networks are One-vs-All"
        assert not entry.softmax_decision or (entry.ova and not entry.separate), "a decision beside shared heads"


class TestLearningRateSchedules(SettingContract):
    registry = LR_SCHEDULES
    setting = "lr_schedule"

    def check(self, name: str, entry: Any) -> None:
        factors = [entry(step, 10) for step in range(11)]
        assert factors[0] == 1.0 and all(0.0 <= f <= 1.0 for f in factors)
        assert all(a >= b for a, b in zip(factors, factors[1:])), f"{name} must not raise the rate"
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        schedule = build_schedule(optimizer, Config(lr_schedule=name), 10)
        for _ in range(4):
            optimizer.step()
            schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * entry(4, 10))


class TestSemiRules(SettingContract):
    registry = SEMI_RULES
    setting = "semi_rule"

    def check(self, name: str, entry: Any) -> None:
        probs = torch.rand(2, 3, 4, 5)
        plain = (probs > 0.5).float()
        refined = refine_pseudo_labels(probs, 4, rule=name)
        assert refined.shape == probs.shape and set(refined.unique().tolist()) <= {0.0, 1.0}
        changed = (refined != plain).reshape(2, 3, -1).sum(-1)
        assert (changed <= 4).all(), f"{name} changes more than the top_l most uncertain pixels of a class"

    def test_refinement_lists_the_rules_for_an_unknown_one(self) -> None:
        with pytest.raises(ValueError, match="paper, wta"):
            refine_pseudo_labels(torch.rand(1, 2, 2, 2), 1, rule=UNKNOWN)


class TestSemiTeachers(SettingContract):
    registry = SEMI_TEACHERS
    setting = "semi_teacher"

    def check(self, name: str, entry: Any) -> None:
        assert isinstance(entry, bool)
        assert Config(semi=True, semi_teacher=name).semi_teacher == name


class TestEncoderWeights(RegistryContract):
    registry = WEIGHT_SOURCES

    def check(self, name: str, entry: Any) -> None:
        assert entry.load is None or callable(entry.load)
        for stats in (entry.mean, entry.std):
            assert len(stats) == 3 and all(0 < v <= 1 for v in stats)

    def test_an_unknown_name_lists_the_valid_ones(self) -> None:
        """Any name not registered is read as a file path; missing, it fails naming the registered sources."""
        with pytest.raises(WeightsUnavailableError) as err:
            load_encoder_weights(object(), UNKNOWN)
        assert all(name in str(err.value) for name in WEIGHT_SOURCES)


class TestMethods(RegistryContract):
    registry = METHODS

    def check(self, name: str, entry: Any) -> None:
        config = Config(**{**PRESETS["cpu"], **entry})
        assert all(getattr(config, key) == value for key, value in entry.items())


class TestPresets(RegistryContract):
    registry = PRESETS

    def check(self, name: str, entry: Any) -> None:
        config = Config(**entry)
        assert config.budget == entry["init_pixels"] + entry["rounds"] * entry["pixels_per_round"]
        assert not math.isnan(config.lr)


class TestCommands(RegistryContract):
    """``python -m ovaal_backend <command>``: each sub-command's parser names the function that runs it."""

    registry = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices

    def check(self, name: str, entry: Any) -> None:
        run = entry.get_default("run")
        assert callable(run) and run.__name__ == f"run_{name}", f"{name}: no function of its own"


def test_every_engine_field_is_a_simulate_flag_or_a_listed_exception() -> None:
    """``simulate``'s flags are made from the engine fields (simulator/flags.py): each field the simulator can vary
    has a flag of its name and type, each exception names a field and says why, and a flag given reaches the config."""
    assert SIMULATE_NO_FLAG.keys() <= EngineConfig.names() and all(SIMULATE_NO_FLAG.values())
    assert FLAG_HELP.keys() | FLAG_NAMES.keys() <= set(simulate_flag_fields())
    parser = build_parser()
    simulate = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["simulate"]
    flags = {action.dest: action for action in simulate._actions}
    for name in simulate_flag_fields():
        assert f"--{FLAG_NAMES.get(name, name).replace('_', '-')}" in flags[name].option_strings
        assert flags[name].choices in (None, ENGINE_CHOICES.get(name))
    base = ["simulate", "--train", "t", "--eval", "e", "--out", "o"]
    assert simulation_config(parser.parse_args([*base, "--threads", "3", "--seed", "5", "--pixels-per-round", "7",
                                                "--keep-optimizer", "--no-retrain"])).engine == \
        EngineConfig(**{**PRESETS["cpu"], "num_threads": 3, "seed": 5, "pixels_per_round": 7, "keep_optimizer": True})
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--lr-schedule", UNKNOWN])  # a named choice takes only the names the field takes


def test_the_simulators_cpu_presets_are_the_one_cpu_profile_with_the_protocols_epochs() -> None:
    """The backend's TRAIN_PROFILE=cpu and the simulator's cpu protocols share one profile: the presets start from it
    and change only its epochs (simulator/presets.py says why)."""
    for name in ("cpu", "converged"):
        changed = {key for key, value in TRAIN_PROFILES["cpu"].items() if PRESETS[name][key] != value}
        assert changed <= {"epochs", "first_round_epochs", "semi_epochs"}, name

import pickle

import numpy as np
import pytest

from ovaal_backend.config import PARTS, Config, ConfigError, EngineConfig, QueueConfig, ServerConfig, setting_fields


def test_environment_overrides_defaults():
    config = Config.from_env({"PIXELS_PER_ROUND": "33", "RETRAIN": "yes", "LR": "0.001", "DEVICE": "cpu",
                              "CLASSIFIER": "multiclass", "SELECTION": "margin", "SEMI": "false"})
    assert (config.pixels_per_round, config.retrain, config.lr, config.device) == (33, True, 0.001, "cpu")
    assert Config.from_env({}) == Config()


@pytest.mark.parametrize("env,message", [
    ({"PIXELS_PER_ROUND": "many"}, "PIXELS_PER_ROUND='many' is not a valid int"),
    ({"RETRAIN": "perhaps"}, "RETRAIN"),
    ({"CLASSIFIER": "svm"}, "classifier='svm': choose one of"),
    ({"CLASSIFIER": "multiclass", "SELECTION": "margin", "SEMI": "true"}, "use an OVA classifier or set SEMI=false"),
    ({"BASIC_AUTH_USER": "admin"}, "BASIC_AUTH_PASS"),
    ({"DEVICE": "tpu"}, "device='tpu'"),
    ({"MAX_PREDICT_CALLS": "8"}, "MAX_PREDICT_CALLS must lie in 1..SERVER_THREADS-1"),
    ({"MAX_PREDICT_CALLS": "0"}, "MAX_PREDICT_CALLS must lie in 1..SERVER_THREADS-1"),
    ({"SERVER_THREADS": "2"}, "max_predict_calls=2 with server_threads=2"),
])
def test_bad_settings_name_the_problem(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_env(env)


def test_secrets_are_hidden_in_dicts():
    config = Config(label_studio_api_key="secret", basic_auth_user="u", basic_auth_pass="p")
    dumped = config.to_dict()
    assert dumped["label_studio_api_key"] == "***" and dumped["basic_auth_pass"] == "***"
    assert config.budget == config.init_pixels + config.rounds * config.pixels_per_round


def test_label_studio_ml_names_are_aliases_and_ours_win():
    env = {"LABEL_STUDIO_ACCESS_TOKEN": "tok", "LABEL_STUDIO_HOST": "http://ls:8080", "THREADS": "3",
           "START_TRAINING_EACH_N_UPDATES": "5"}
    config = Config.from_env(env)
    assert (config.label_studio_api_key, config.label_studio_url) == ("tok", "http://ls:8080")
    assert (config.server_threads, config.train_after_annotations) == (3, 5)
    assert Config.from_env({**env, "SERVER_THREADS": "6"}).server_threads == 6
    with pytest.raises(ConfigError, match="THREADS"):
        Config.from_env({"THREADS": "many"})


def test_cpu_profile_replaces_only_the_training_defaults_left_unset():
    cpu = Config().for_machine(has_cuda=False)
    assert (cpu.image_height, cpu.image_width, cpu.epochs, cpu.first_round_epochs, cpu.semi_epochs) == \
        (176, 240, 2, 3, 6)
    assert cpu.train_profile == "cpu" and cpu.for_machine(has_cuda=False) == cpu  # resolved once, then stable
    assert Config().for_machine(has_cuda=True) == Config(train_profile="gpu")
    assert Config(epochs=7).for_machine(has_cuda=False).epochs == 7
    assert Config(train_profile="gpu").for_machine(has_cuda=False).image_height == 360
    assert Config(train_profile="cpu").for_machine(has_cuda=True).image_height == 176
    with pytest.raises(ConfigError, match="train_profile"):
        Config(train_profile="tpu")


def test_explicit_settings_win_over_the_profile_whatever_their_value():
    """EPOCHS=20 IMAGE_HEIGHT=360 set on a CPU machine train 20 epochs at 360 px, although both equal the defaults."""
    config = Config.from_env({"EPOCHS": "20", "IMAGE_HEIGHT": "360", "DEVICE": "cpu"})
    assert config.explicit == {"epochs", "image_height", "device"}
    cpu = config.for_machine(has_cuda=False)
    assert (cpu.epochs, cpu.image_height) == (20, 360)
    assert (cpu.image_width, cpu.first_round_epochs, cpu.semi_epochs) == (240, 3, 6)  # the unset ones follow it
    assert Config.from_env({}, epochs=20).for_machine(has_cuda=False).epochs == 20  # overrides count as set
    assert Config.from_env({"EPOCHS": ""}).for_machine(has_cuda=False).epochs == 2  # empty = not set
    assert Config(epochs=20).for_machine(has_cuda=False).epochs == 20  # given in code counts as set too
    assert EngineConfig(image_height=360).for_machine(has_cuda=False).image_height == 360
    assert Config(epochs=20) == Config() and Config(epochs=20).explicit == {"epochs"}  # explicit is not compared
    assert cpu.replace(seed=3).explicit == config.explicit  # kept through copies (a queued job carries it)
    with pytest.raises(ConfigError, match="no_such_setting"):
        Config(explicit=frozenset({"no_such_setting"}))


def test_a_queued_job_trains_with_the_profile_of_the_worker_machine():
    """With REDIS_URL the web process leaves TRAIN_PROFILE=auto unapplied; the worker resolves it by its own CUDA."""
    web = Config.from_env({"REDIS_URL": "redis://r:6379/0", "DEVICE": "cpu", "EPOCHS": "20"})
    worker = Config.from_env({"REDIS_URL": "redis://r:6379/0"})
    on_cpu, on_gpu = web.engine.for_worker(worker, has_cuda=False), web.engine.for_worker(worker, has_cuda=True)
    assert (on_cpu.train_profile, on_cpu.image_height, on_cpu.epochs) == ("cpu", 176, 20)  # EPOCHS set: kept
    assert (on_gpu.train_profile, on_gpu.image_height, on_gpu.epochs) == ("gpu", 360, 20)
    pinned = Config.from_env({"TRAIN_PROFILE": "gpu"})  # set on the backend: every worker trains with it
    assert pinned.engine.for_worker(Config.from_env({"TRAIN_PROFILE": "cpu"}), has_cuda=False).image_height == 360
    cpu_worker = Config.from_env({"TRAIN_PROFILE": "cpu"})  # else the worker's own setting decides
    assert web.engine.for_worker(cpu_worker, has_cuda=True).image_height == 176
    compose = Config.from_env({"TRAIN_PROFILE": "auto"})  # auto set on the backend still leaves it to the worker
    assert compose.engine.for_worker(worker, has_cuda=False).train_profile == "cpu"


def test_the_web_process_applies_no_profile_for_queued_jobs(tmp_path):
    from ovaal_backend.backend.app import create_app

    queued = create_app(Config(redis_url="redis://127.0.0.1:1/0", model_dir=str(tmp_path / "q"), device="cpu"),
                        recover=False)
    assert queued.extensions["ovaal"].config.train_profile == "auto"  # carried unapplied by the round jobs
    here = create_app(Config(model_dir=str(tmp_path / "h"), device="cpu"), recover=False)
    assert (here.extensions["ovaal"].config.train_profile, here.extensions["ovaal"].config.epochs) == ("cpu", 2)


def test_every_setting_lives_in_one_part_and_reads_flat():
    """Config is its engine, server and queue parts; each setting has one owner, and ``config.name`` reads it."""
    owners = [name for cls in PARTS.values() for name in cls.names()]
    assert len(owners) == len(set(owners)) == len(setting_fields())
    config = Config.from_env({"EPOCHS": "7", "PORT": "9191", "JOB_RETRIES": "5"})
    assert (config.engine.epochs, config.server.port, config.queue.job_retries) == (7, 9191, 5)
    assert (config.epochs, config.port, config.job_retries) == (7, 9191, 5)
    assert config.explicit == {"epochs", "port", "job_retries"} and config.engine.explicit == {"epochs"}
    assert Config(EngineConfig(seed=3), ServerConfig(port=1), QueueConfig(job_retries=0)) == \
        Config(seed=3, port=1, job_retries=0)
    assert config.replace(seed=4).engine == config.engine.replace(seed=4)
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(TypeError, match="no_such_setting"):
        Config(no_such_setting=1)
    with pytest.raises(AttributeError):
        config.no_such_setting  # noqa: B018


def test_the_engine_part_holds_no_secret():
    """What a round job carries (its engine part) has no Label Studio key, basic-auth pair or Redis URL, so its
    pickle (what rq writes into Redis) holds none of their values."""
    from ovaal_backend.engine.job import START, RoundJob

    assert not EngineConfig.names() & {"label_studio_api_key", "basic_auth_user", "basic_auth_pass", "redis_url"}
    secrets = ("tok-5b1e0f2d9c", "pw-a7c33e01", "redis-pw-9e4d")
    config = Config(label_studio_api_key=secrets[0], basic_auth_user="admin", basic_auth_pass=secrets[1],
                    redis_url=f"redis://:{secrets[2]}@redis:6379/0")
    job = RoundJob(config=config, classes=["sky", "road"], ended_round=START, keys=[1], image_paths=["/m/1/i.png"],
                   points=[np.zeros((0, 3), dtype=np.int64)], checkpoint="/m/1/model.pt", version=1, generation=0)
    assert job.config == config.engine  # a whole Config given to a job is cut down to its engine part
    travelling = pickle.dumps(job)
    assert not [secret for secret in secrets if secret.encode() in travelling]
    assert secrets[0].encode() in pickle.dumps(config)  # the check can see a secret where there is one

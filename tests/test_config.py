import pytest

from ovaal_backend.config import Config, ConfigError


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
    assert Config().for_machine(has_cuda=True) == Config()
    assert Config(epochs=7).for_machine(has_cuda=False).epochs == 7
    assert Config(train_profile="gpu").for_machine(has_cuda=False).image_height == 360
    assert Config(train_profile="cpu").for_machine(has_cuda=True).image_height == 176
    with pytest.raises(ConfigError, match="train_profile"):
        Config(train_profile="tpu")

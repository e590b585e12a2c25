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
    ({"CLASSIFIER": "multiclass", "SELECTION": "margin"}, "use an OVA classifier or set SEMI=false"),
    ({"BASIC_AUTH_USER": "admin"}, "BASIC_AUTH_PASS"),
    ({"DEVICE": "tpu"}, "device='tpu'"),
])
def test_bad_settings_name_the_problem(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_env(env)


def test_secrets_are_hidden_in_dicts():
    config = Config(label_studio_api_key="secret", basic_auth_user="u", basic_auth_pass="p")
    dumped = config.to_dict()
    assert dumped["label_studio_api_key"] == "***" and dumped["basic_auth_pass"] == "***"
    assert config.budget == config.init_pixels + config.rounds * config.pixels_per_round

"""``shardtrain.secrets``: the one rule for what is a credential, and every place a value leaves
the process that uses it (specs, job targets, ModelArtifact params and manifests, lineage,
Prefect artifacts, the tuner's trial table).

Two tables carry the rule: real credential names of the libraries shardtrain integrates
(each must be flagged, refused by a TrainingSpec and by a JobTarget with a message that names
the key and never the value), and the parameter names of XGBoost, LightGBM and PyTorch (none
may be flagged: a refused hyper-parameter is a bug). No Ray, no subprocess, no socket.
"""

from __future__ import annotations

import base64
import inspect
import json

import pytest

from shardtrain.errors import ConfigError, ShardtrainError
from shardtrain.integrations import DataSpec, TrainingSpec
from shardtrain.integrations.lineage import model_facts, safe_params, training_lineage
from shardtrain.jobs.target import JobTarget
from shardtrain.model.artifact import ModelArtifact
from shardtrain.secrets import (
    MASK,
    find_secrets,
    is_secret_name,
    looks_like_secret_value,
    name_parts,
    redact,
    redact_text,
    refuse_secrets,
    secret_value_kind,
)

#: The value every credential below holds: it must never appear in a message.
VALUE = "s3cr3t-VALUE-never-shown-8731"

#: Credential names as the libraries we integrate spell them (id: where the name comes from).
CREDENTIAL_NAMES = [
    # boto3 / botocore (arguments and environment)
    ("aws_access_key_id", "boto"),
    ("aws_secret_access_key", "boto"),
    ("aws_session_token", "boto"),
    ("AWS_ACCESS_KEY_ID", "boto-env"),
    ("AWS_SECRET_ACCESS_KEY", "boto-env"),
    ("AWS_SESSION_TOKEN", "boto-env"),
    ("AWS_SECURITY_TOKEN", "boto-env"),
    # s3fs / fsspec storage_options (plain names)
    ("key", "s3fs"),
    ("secret", "s3fs"),
    ("token", "s3fs-gcsfs"),
    ("storage_options", "fsspec"),
    # gcsfs
    ("credentials", "gcsfs"),
    ("GOOGLE_APPLICATION_CREDENTIALS", "google-env"),
    # adlfs / azure
    ("account_key", "adlfs"),
    ("sas_token", "adlfs"),
    ("connection_string", "adlfs"),
    ("client_secret", "adlfs"),
    ("credential", "adlfs"),
    ("AZURE_STORAGE_KEY", "azure-env"),
    ("AZURE_STORAGE_CONNECTION_STRING", "azure-env"),
    ("AZURE_STORAGE_SAS_TOKEN", "azure-env"),
    ("AZURE_CLIENT_SECRET", "azure-env"),
    ("sas_url", "azure"),
    # Snowflake connector / Snowpark
    ("password", "snowflake"),
    ("private_key", "snowflake"),
    ("private_key_file_pwd", "snowflake"),
    ("private_key_passphrase", "snowflake"),
    ("oauth_token", "snowflake-oauth"),
    ("SNOWFLAKE_PASSWORD", "snowflake-env"),
    ("PRIVATE_KEY_PASSPHRASE", "snowflake-env"),
    # MLflow
    ("MLFLOW_TRACKING_PASSWORD", "mlflow"),
    ("MLFLOW_TRACKING_TOKEN", "mlflow"),
    # Weights & Biases and other trackers
    ("WANDB_API_KEY", "wandb"),
    ("api_key", "wandb"),
    ("COMET_API_KEY", "comet"),
    ("NEPTUNE_API_TOKEN", "neptune"),
    # Hugging Face
    ("HF_TOKEN", "hf"),
    ("HUGGING_FACE_HUB_TOKEN", "hf"),
    ("hub_token", "hf-trainer"),
    # GitHub
    ("GITHUB_TOKEN", "github"),
    ("GH_TOKEN", "github"),
    # HTTP
    ("Authorization", "http"),
    ("authorization", "http"),
    ("Proxy-Authorization", "http"),
    ("X-Api-Key", "http"),
    ("Cookie", "http"),
    ("bearer_token", "http"),
    ("basic_auth", "http"),
    # databases, OAuth and friends
    ("PGPASSWORD", "postgres"),
    ("MYSQL_PWD", "mysql"),
    ("db_passwd", "db"),
    ("passphrase", "ssh"),
    ("ssh_private_key", "ssh"),
    ("access_token", "oauth"),
    ("refresh_token", "oauth"),
    ("id_token", "oidc"),
    ("auth_token", "generic"),
    ("DATABRICKS_TOKEN", "databricks"),
    ("OPENAI_API_KEY", "openai"),
    ("SENTRY_DSN", "sentry"),
    ("conn_str", "odbc"),
    ("encryption_key", "generic"),
    ("gcp_creds", "generic"),
    # camelCase, dotted and dashed spellings of the same
    ("apiKey", "camel"),
    ("accessKeyId", "camel"),
    ("secretAccessKey", "camel"),
    ("AWSSecretAccessKey", "camel-acronym"),
    ("sessionToken", "camel"),
    ("connectionString", "camel"),
    ("clientSecret", "camel"),
    ("spark.hadoop.fs.s3a.secret.key", "dotted"),
    ("fs.azure.account.key", "dotted"),
    ("x-auth-token", "dashed"),
]
NAMES = [name for name, _ in CREDENTIAL_NAMES]
IDS = [f"{source}:{name}" for name, source in CREDENTIAL_NAMES]

#: Names a training run legitimately uses that a careless rule would take for credentials.
LEGITIMATE_NAMES = [
    # XGBoost / LightGBM
    "max_bin", "eval_metric", "num_leaves", "objective", "monotone_constraints",
    "tree_method", "feature_names", "feature_types", "interaction_constraints",
    "categorical_feature", "early_stopping_rounds", "n_estimators", "learning_rate",
    # *key*, *token*, *auth*, *pass* that are not credentials
    "keys", "key_column", "key_columns", "label_key", "sort_key", "primary_key",
    "partition_key", "group_key", "cache_key", "s3_key", "monkey_patch", "keyboard",
    "pad_token_id", "eos_token_id", "bos_token", "eos_token", "unk_token", "mask_token",
    "sep_token", "cls_token", "pad_token", "decoder_start_token_id", "max_token_length",
    "max_tokens", "max_new_tokens", "num_tokens", "tokens_per_batch", "special_tokens",
    "additional_special_tokens", "tokenizer", "tokenizer_name", "token_dropout",
    "authors", "auth_type", "authenticator", "num_passes", "bypass", "compass",
    "signature", "session_id", "secretary_bird_count",
    # the environment a job gets
    "PWD", "OLDPWD", "PYTHONPATH", "TOKENIZERS_PARALLELISM", "HF_HOME", "HF_HUB_OFFLINE",
    "WANDB_PROJECT", "WANDB_MODE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL",
    "SNOWFLAKE_CONNECTION_NAME", "RAY_ADDRESS", "MASTER_ADDR", "MASTER_PORT", "RANK",
    "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
    "NCCL_SOCKET_IFNAME", "SHARDTRAIN_HOME",
    # shardtrain's own keys
    "num_workers", "num_cpu_per_worker", "use_gpu", "max_failures", "checkpoint_frequency",
    "resource_requirements_per_worker", "snowflake_connection", "artifact_stage_location",
    "pip", "working_dir", "env_vars", "py_modules", "excludes",
]  # fmt: skip


def torch_spec(**overrides) -> TrainingSpec:
    fields = dict(framework="pytorch", request_id="run-s", train_func="pkg.module:train")
    return TrainingSpec(**{**fields, **overrides})


def xgb_spec(**overrides) -> TrainingSpec:
    fields = dict(
        framework="xgboost",
        request_id="run-x",
        train_data={"path": "/data/train"},
        input_cols=["A", "B"],
        label_col="Y",
    )
    return TrainingSpec(**{**fields, **overrides})


def assert_named_not_shown(error: BaseException, name: str) -> None:
    text = str(error)
    assert repr(name) in text, text
    assert VALUE not in text and VALUE not in repr(error.__dict__), text


# -- the credential names: flagged, refused by a spec and a job target ------------------------


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_credential_names_are_flagged(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_a_pytorch_spec_refuses_a_credential_in_hyper_params(name):
    with pytest.raises(ConfigError, match="never holds secrets") as refused:
        torch_spec(hyper_params={"lr": 0.1, name: VALUE})
    assert_named_not_shown(refused.value, name)
    assert "hyper_params" in str(refused.value)


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_a_boosting_spec_refuses_a_credential_nested_in_params(name):
    with pytest.raises(ConfigError, match="never holds secrets") as refused:
        xgb_spec(params={"max_depth": 3, "callbacks": [{"options": {name: VALUE}}]})
    assert_named_not_shown(refused.value, name)
    assert "params['callbacks'][0]['options']" in str(refused.value)


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_a_job_target_refuses_a_credential_in_env_vars(name):
    with pytest.raises(ConfigError, match="never holds secrets") as refused:
        JobTarget(address="http://head:8265", runtime_env={"env_vars": {name: VALUE}})
    assert_named_not_shown(refused.value, name)
    assert "runtime_env['env_vars']" in str(refused.value)


# -- legitimate names: never flagged ------------------------------------------------------------


@pytest.mark.parametrize("name", LEGITIMATE_NAMES)
def test_legitimate_names_are_not_flagged(name):
    assert not is_secret_name(name)


def flagged(names) -> list[str]:
    return sorted(str(n) for n in names if is_secret_name(n))


def test_no_lightgbm_parameter_or_alias_is_flagged():
    lightgbm = pytest.importorskip("lightgbm")
    from lightgbm.basic import _ConfigAliases

    table = _ConfigAliases._get_all_param_aliases()
    names = set(table) | {alias for aliases in table.values() for alias in aliases}
    for estimator in (lightgbm.LGBMRegressor, lightgbm.LGBMClassifier, lightgbm.LGBMRanker):
        names |= set(estimator().get_params())
    assert len(names) > 250  # the whole table, not an empty one
    assert flagged(names) == []


def test_no_xgboost_parameter_is_flagged():
    xgboost = pytest.importorskip("xgboost")
    import numpy as np

    from shardtrain.modeling.params import XGBOOST_PARAMS  # the documented list (3.2)

    names = set(XGBOOST_PARAMS)
    for estimator in (
        xgboost.XGBRegressor,
        xgboost.XGBClassifier,
        xgboost.XGBRanker,
        xgboost.XGBRFRegressor,
    ):
        names |= set(estimator().get_params()) | set(estimator().get_xgb_params())
    # every key of a trained booster's full configuration, the internal ones included
    X = np.arange(16, dtype=np.float32).reshape(8, 2)
    booster = xgboost.train({"nthread": 1}, xgboost.DMatrix(X, label=X[:, 0]), 1)

    def keys(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from keys(value)
        elif isinstance(node, list):
            for value in node:
                yield from keys(value)

    names |= set(keys(json.loads(booster.save_config())))
    assert len(names) > 90
    assert flagged(names) == []


def test_no_torch_optimizer_scheduler_layer_or_loader_argument_is_flagged():
    torch = pytest.importorskip("torch")
    from torch.optim import lr_scheduler

    classes = [
        obj
        for module in (torch.optim, lr_scheduler)
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer | lr_scheduler.LRScheduler)
    ]
    classes += [torch.utils.data.DataLoader]
    classes += [
        getattr(torch.nn, name)
        for name in ("Transformer", "LSTM", "Embedding", "MultiheadAttention", "Conv2d")
    ]
    names = set()
    for cls in classes:
        try:
            names |= set(inspect.signature(cls).parameters)
        except (TypeError, ValueError):
            continue
    assert len(names) > 100
    assert flagged(names) == []


def test_a_spec_takes_every_lightgbm_and_xgboost_parameter_name_and_round_trips():
    pytest.importorskip("lightgbm")
    from shardtrain.modeling.params import XGBOOST_PARAMS, lightgbm_params

    for framework, names in (("lightgbm", lightgbm_params()), ("xgboost", XGBOOST_PARAMS)):
        spec = xgb_spec(framework=framework, params={name: 1 for name in names})
        assert TrainingSpec.from_json(spec.to_json()) == spec
        assert TrainingSpec.from_json(spec.to_json()).to_json() == spec.to_json()


@pytest.mark.parametrize(
    "params",
    [
        {"label_key": "y", "key_column": "id", "keys": ["a", "b"]},
        {"pad_token_id": 0, "eos_token": "</s>", "max_tokens": 512, "tokenizer": "bpe"},
        {"objective": "reg:squarederror", "eval_metric": ["rmse", "mae"], "max_bin": 256},
        {"monotone_constraints": "(1,-1)", "tree_method": "hist", "feature_names": ["a"]},
        {"nested": {"sort_key": "ts", "layers": [{"auth_type": "none"}]}},
    ],
)
def test_specs_with_legitimate_names_round_trip_exactly(params):
    spec = torch_spec(hyper_params=params)
    assert TrainingSpec.from_dict(spec.to_dict()) == spec
    assert TrainingSpec.from_json(spec.to_json()) == spec
    assert find_secrets(params) == []


# -- name parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,parts",
    [
        ("api_key", ["api", "key"]),
        ("apiKey", ["api", "key"]),
        ("AWSSecretAccessKey", ["aws", "secret", "access", "key"]),
        ("x-amz-security-token", ["x", "amz", "security", "token"]),
        ("fs.s3a.secret.key", ["fs", "s", "3", "a", "secret", "key"]),
        ("HF_TOKEN", ["hf", "token"]),
        ("", []),
    ],
)
def test_names_are_split_into_lowercase_parts(name, parts):
    assert name_parts(name) == parts


@pytest.mark.parametrize("name", [None, 3, 0.5, b"\x00"])
def test_names_that_are_not_strings_are_read_as_text(name):
    assert is_secret_name(name) is False


# -- values ----------------------------------------------------------------------------------

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
BASIC = "Basic " + base64.b64encode(b"alice:" + VALUE.encode()).decode()
SECRET_VALUES = [
    ("s3://AKIDEXAMPLE:" + VALUE + "@bucket/train", "user:password"),
    ("snowflake://alice:" + VALUE + "@acme/DB/SCHEMA", "user:password"),
    ("postgresql://u:" + VALUE + "@db:5432/mlflow", "user:password"),
    ("git+https://x-access-token:" + VALUE + "@github.com/org/repo", "user:password"),
    ("https://acct.blob.core.windows.net/c/x?sv=2022-11-02&sig=" + VALUE, "signed URL"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Signature=" + VALUE + "&X-Amz-Expires=60", "signed"),
    ("https://api.example.com/v1?access_token=" + VALUE, "signed URL"),
    ("Bearer " + VALUE, "Authorization"),
    (BASIC, "Authorization"),
    (PEM, "private key"),
    ("AKIAIOSFODNN7EXAMPLE", "access key"),
    ("ghp_" + "a1B2" * 9, "token"),
    ("hf_" + "abcdEFGH" * 4 + "xy", "token"),
    ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=" + VALUE + ";", "AccountKey"),
    ("Driver={ODBC};Server=db;UID=u;PWD=" + VALUE, "PWD"),
]
BENIGN_VALUES = [
    "reg:squarederror",
    "binary:logistic",
    "hist",
    "(1,-1,0)",
    "s3://bucket/train/",
    "s3://bucket/path?versionId=3",
    "abfs://container@account.dfs.core.windows.net/data",  # a container, not credentials
    "git+ssh://git@github.com/org/repo",  # a user name, no password
    "http://head:8265",
    "@DB.SCHEMA.STAGE/models",
    "Basic regression",
    "Bearer",
    "pkg.module:train",
    "AKIA",
    "max_depth=6",
    "",
    "a key, a token and a secret",
]


@pytest.mark.parametrize("value,kind", SECRET_VALUES, ids=[k for _, k in SECRET_VALUES])
def test_credential_values_are_recognised_and_their_kind_named(value, kind):
    assert looks_like_secret_value(value)
    assert VALUE not in (secret_value_kind(value) or "")
    assert VALUE not in redact_text(value)


@pytest.mark.parametrize("value", BENIGN_VALUES)
def test_ordinary_values_are_not_credentials(value):
    assert not looks_like_secret_value(value)


@pytest.mark.parametrize("value", [None, 3, 2.5, True, ["Bearer " + VALUE], {"a": 1}])
def test_only_strings_are_credential_values(value):
    assert not looks_like_secret_value(value)  # containers are walked by find_secrets


@pytest.mark.parametrize("value,kind", SECRET_VALUES[:8], ids=[k for _, k in SECRET_VALUES[:8]])
def test_a_spec_refuses_a_credential_value_under_an_ordinary_name(value, kind):
    with pytest.raises(ConfigError, match="never holds secrets") as refused:
        torch_spec(hyper_params={"endpoint": value})
    assert "hyper_params['endpoint']" in str(refused.value)
    assert VALUE not in str(refused.value)


@pytest.mark.parametrize(
    "path",
    [
        "s3://AKID:" + VALUE + "@bucket/train",
        "https://acct.blob.core.windows.net/c/train?sv=1&sig=" + VALUE,
    ],
)
def test_data_paths_and_stage_locations_refuse_credentials_in_urls(path):
    with pytest.raises(ConfigError, match="carries credentials in its URL") as data:
        DataSpec(path=path)
    with pytest.raises(ConfigError, match="carries credentials in its URL") as stage:
        xgb_spec(artifact_stage_location=path)
    for refused in (data, stage):
        assert VALUE not in str(refused.value)
        assert "storage_options" in str(refused.value)


# -- find_secrets / refuse_secrets ------------------------------------------------------------


def test_find_secrets_names_every_path_in_nested_dicts_and_lists():
    obj = {
        "eta": 0.1,
        "aws": {"key": VALUE, "region": "eu-west-1"},
        "hooks": [{"url": "s3://k:" + VALUE + "@b/x"}, "Bearer " + VALUE, 3],
        "label_key": "y",
    }
    assert find_secrets(obj, "params") == [
        "params['aws']['key']",
        "params['hooks'][0]['url']",
        "params['hooks'][1]",
    ]


def test_find_secrets_of_clean_or_plain_values_is_empty():
    assert find_secrets({"eta": 0.1, "layers": [32, 16], "name": "m"}) == []
    assert find_secrets([]) == [] and find_secrets(None) == [] and find_secrets(3) == []


def test_find_secrets_walks_tuples_and_names_a_bare_value_by_its_path():
    assert find_secrets(("a", ("Bearer " + VALUE,)), "args") == ["args[1][0]"]
    assert find_secrets("Bearer " + VALUE, "header") == ["header"]


def test_a_key_that_is_itself_a_credential_is_found_and_shown_redacted():
    found = find_secrets({"s3://k:" + VALUE + "@bucket/x": 1}, "paths")
    assert found == ["paths['s3://bucket/x']"]


def test_refuse_secrets_says_how_to_pass_the_value_instead():
    with pytest.raises(ConfigError) as refused:
        refuse_secrets({"db": {"password": VALUE}}, "params")
    text = str(refused.value)
    assert isinstance(refused.value, ShardtrainError)
    assert "params['db']['password']" in text and VALUE not in text
    for way in ("environment", "connection", "Prefect block", "storage_options=", "session="):
        assert way in text
    assert refused.value.keys == ["params['db']['password']"]


def test_refuse_secrets_names_all_of_them_at_once():
    with pytest.raises(ConfigError) as refused:
        refuse_secrets({"token": VALUE, "nested": {"api_key": VALUE}}, "hyper_params")
    assert refused.value.keys == ["hyper_params['token']", "hyper_params['nested']['api_key']"]


def test_refuse_secrets_lets_clean_values_through():
    refuse_secrets({"eta": 0.1, "label_key": "y", "path": "s3://bucket/x"}, "params")


def test_the_error_pickles_without_the_value():
    import pickle

    with pytest.raises(ConfigError) as refused:
        refuse_secrets({"HF_TOKEN": VALUE}, "runtime_env['env_vars']")
    again = pickle.loads(pickle.dumps(refused.value))
    assert str(again) == str(refused.value) and VALUE not in pickle.dumps(again).decode("latin1")


# -- job targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "runtime_env,where",
    [
        ({"working_dir": "s3://AKID:" + VALUE + "@bucket/wd.zip"}, "runtime_env['working_dir']"),
        ({"pip": ["git+https://u:" + VALUE + "@github.com/o/r.git"]}, "runtime_env['pip'][0]"),
        ({"env_vars": {"DATABASE_URL": "postgresql://u:" + VALUE + "@h/db"}}, "DATABASE_URL"),
        ({"env_vars": {"HEADERS": "Bearer " + VALUE}}, "HEADERS"),
    ],
)
def test_a_job_target_refuses_credentials_anywhere_in_its_runtime_env(runtime_env, where):
    with pytest.raises(ConfigError, match="never holds secrets") as refused:
        JobTarget(address="http://head:8265", runtime_env=runtime_env)
    assert where in str(refused.value) and VALUE not in str(refused.value)


def test_a_job_target_takes_an_ordinary_runtime_env():
    env = {name: "1" for name in LEGITIMATE_NAMES if name.isupper()}
    target = JobTarget(
        address="http://head:8265",
        runtime_env={"pip": ["shardtrain[xgboost]==1.0"], "env_vars": env},
    )
    assert target.runtime_env["env_vars"] == env


def test_a_job_targets_links_and_errors_never_show_user_info():
    target = JobTarget(address="http://alice:" + VALUE + "@head:8265")
    assert target.dashboard_link("job-1") == "http://head:8265/#/jobs/job-1"
    with pytest.raises(ConfigError) as bad:
        JobTarget(address="ray://alice:" + VALUE + "@head:10001")
    assert VALUE not in str(bad.value)


def test_a_job_targets_headers_may_carry_a_token_and_never_show_it():
    target = JobTarget(address="http://head:8265", headers={"Authorization": "Bearer " + VALUE})
    assert VALUE not in repr(target)


# -- redact / redact_text ---------------------------------------------------------------------


def test_redact_masks_secret_named_values_and_credentials_in_strings():
    params = {
        "eta": 0.1,
        "api_key": VALUE,
        "aws": {"aws_secret_access_key": VALUE, "region": "eu"},
        "urls": ["s3://k:" + VALUE + "@bucket/x", "s3://bucket/y"],
        "auth": ("Bearer " + VALUE,),
        "storage_options": {"key": VALUE, "secret": VALUE},
    }
    shown = redact(params)
    assert shown == {
        "eta": 0.1,
        "api_key": MASK,
        "aws": {"aws_secret_access_key": MASK, "region": "eu"},
        "urls": ["s3://bucket/x", "s3://bucket/y"],
        "auth": MASK,
        "storage_options": MASK,
    }
    assert VALUE not in json.dumps(shown)
    assert params["api_key"] == VALUE  # a copy: the caller's dict is untouched


def test_redact_drop_leaves_secret_named_keys_out():
    assert redact({"eta": 0.1, "token": VALUE, "n": {"password": VALUE}}, drop=True) == {
        "eta": 0.1,
        "n": {},
    }


def test_redact_keeps_types_and_is_idempotent():
    params = {"t": (1, "Bearer " + VALUE), "l": [1.5, None, True], "hf_token": VALUE, 3: "x"}
    once = redact(params)
    assert once == {"t": (1, f"Bearer {MASK}"), "l": [1.5, None, True], "hf_token": MASK, 3: "x"}
    assert redact(once) == once


@pytest.mark.parametrize(
    "text,shown",
    [
        ("reading s3://k:" + VALUE + "@bucket/x now", "reading s3://bucket/x now"),
        ("Authorization: Bearer " + VALUE, "Authorization: Bearer ***"),
        ("curl -H 'Authorization: " + BASIC + "'", "curl -H 'Authorization: Basic ***'"),
        ("password=" + VALUE + " user=alice", "password=*** user=alice"),
        ("{'api_key': '" + VALUE + "', 'eta': 0.1}", "{'api_key': '***', 'eta': 0.1}"),
        ('{"HF_TOKEN": "' + VALUE + '", "lr": 1}', '{"HF_TOKEN": "***", "lr": 1}'),
        ("https://a.blob.core.windows.net/c?sv=1&sig=" + VALUE, "https://a.blob.core.windows.net/c?sv=1&sig=***"),
        ("key AKIAIOSFODNN7EXAMPLE used", "key *** used"),
        ("pem:\n" + PEM, "pem:\n***\n"),
        ("AccountName=a;AccountKey=" + VALUE + ";Suffix=x", "AccountName=a;AccountKey=***;Suffix=x"),
        ("eval: rmse=0.5 max_bin=256 eos_token=2", "eval: rmse=0.5 max_bin=256 eos_token=2"),
        ("nothing to hide", "nothing to hide"),
    ],
)  # fmt: skip
def test_redact_text_masks_credentials_in_log_lines(text, shown):
    assert redact_text(text) == shown


def test_redact_text_takes_any_object():
    assert redact_text({"password": VALUE}) == "{'password': '***'}"
    assert redact_text(3) == "3"


# -- ModelArtifact, manifests, lineage ----------------------------------------------------------


def artifact(**overrides) -> ModelArtifact:
    fields = dict(uri="/tmp/stage/model/r1", framework="pytorch", request_id="r1")
    return ModelArtifact(**{**fields, **overrides})


def test_an_artifacts_params_and_source_are_redacted_on_construction():
    a = artifact(
        params={"lr": 0.1, "wandb_api_key": VALUE, "endpoint": "https://u:" + VALUE + "@h/"},
        source={"train": {"kind": "parquet", "path": "s3://bucket/x"}, "token": VALUE},
    )
    assert a.params == {"lr": 0.1, "wandb_api_key": MASK, "endpoint": "https://h/"}
    assert a.source == {"train": {"kind": "parquet", "path": "s3://bucket/x"}, "token": MASK}
    assert VALUE not in a.to_json()


def test_a_redacted_artifact_round_trips_exactly():
    a = artifact(params={"hf_token": VALUE, "layers": [32, 16]})
    assert ModelArtifact.from_json(a.to_json()) == a
    assert ModelArtifact.from_dict(json.loads(a.to_json())).to_json() == a.to_json()


def test_an_artifact_read_from_an_old_record_is_redacted_too():
    record = artifact().to_dict() | {"params": {"password": VALUE}}
    assert ModelArtifact.from_dict(record).params == {"password": MASK}


def test_a_published_manifest_never_holds_a_secret_param(tmp_path):
    from shardtrain.model.manifest import MANIFEST
    from shardtrain.model.publish import publish_model
    from shardtrain.stage import open_stage

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"weights")
    published = publish_model(
        folder,
        framework="pytorch",
        stage=str(tmp_path / "stage"),
        request_id="r-secret",
        params={"lr": 0.01, "HF_TOKEN": VALUE, "hub": {"url": "https://u:" + VALUE + "@hf.co"}},
    )
    manifest = open_stage(published.uri).read_bytes(MANIFEST).decode()
    assert VALUE not in manifest and VALUE not in published.to_json()
    assert json.loads(manifest)["params"] == {
        "lr": 0.01,
        "HF_TOKEN": MASK,
        "hub": {"url": "https://hf.co"},
    }


def test_lineage_params_drop_secret_names_and_mask_values():
    shown = safe_params(
        {
            "eta": 0.1,
            "sas_token": VALUE,
            "Authorization": "Bearer " + VALUE,
            "hooks": [{"client_secret": VALUE, "url": "s3://k:" + VALUE + "@b/x"}],
        }
    )
    assert shown == {"eta": 0.1, "hooks": [{"url": "s3://b/x"}]}


def test_lineage_facts_of_a_published_model_hold_no_secret():
    a = artifact(params={"lr": 0.1, "api_key": VALUE})
    facts = model_facts(a)
    assert facts["params"] == {"lr": 0.1}
    spec = torch_spec(dataset_map={"train": "/data/train"}, hyper_params={"lr": 0.1})
    lineage = training_lineage(spec, a)
    assert VALUE not in repr(lineage)


# -- the tuner's results ---------------------------------------------------------------------


def test_the_tuners_results_leave_the_process_redacted():
    pd = pytest.importorskip("pandas")
    from shardtrain.modeling.tune.tuner import TunerResults

    frame = pd.DataFrame(
        [
            {"trial_id": "t1", "loss": 0.5, "config/lr": 0.1, "config/api_key": VALUE},
            {"trial_id": "t2", "loss": 0.4, "config/lr": 0.2, "config/api_key": VALUE},
        ]
    )
    results = TunerResults(frame, frame.iloc[[1]], None, metric="loss", mode="min")
    out = results.to_dict()
    assert VALUE not in json.dumps(out)
    assert out["best_result"] == {
        "trial_id": "t2",
        "loss": 0.4,
        "config/lr": 0.2,
        "config/api_key": MASK,
    }
    assert results.results["config/api_key"].tolist() == [VALUE, VALUE]  # in process: as is

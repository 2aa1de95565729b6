"""The collection's own layer, fast and without Ray: task arguments into a TrainingSpec, the
blocks (Prefect's standard block suite), and Snowpark sessions from prefect-snowflake's
credentials with every auth method, key pair included.

No live Snowflake account is reachable here: sessions are checked by the exact parameters
handed to Snowpark's ``Session.builder.configs(...)``, a key pair additionally by the JWT the
Snowflake connector's own key-pair authenticator signs with it, and every configuration by a
session Snowpark's local emulation opens from those same parameters.
"""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

from prefect_shardtrain import ModelStage, RayCluster
from prefect_shardtrain.snowflake import open_snowpark_session, snowpark_configs
from prefect_shardtrain.tasks import boosting_spec, pytorch_spec
from shardtrain import DataConnector
from shardtrain.errors import ConfigError
from shardtrain.integrations import DataSpec, TrainingSpec, close_session, session_from_configs
from tests.helpers import FEATURES, LABEL, open_sessions, write_regression

# -- blocks ----------------------------------------------------------------------------------


class NoHostedLogo:
    def test_has_a_valid_image(self, block) -> None:
        """Overrides the suite's logo check, which downloads ``_logo_url``: the collection has
        no hosted logo yet (the UI shows Prefect's default icon), and no network is reachable
        here. When a logo is hosted, delete this override so the suite checks it."""
        assert block._logo_url is None


class TestRayClusterBlock(NoHostedLogo, BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return RayCluster


class TestModelStageBlock(NoHostedLogo, BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return ModelStage


# -- arguments into specs ----------------------------------------------------------------------


def test_boosting_task_arguments_become_a_training_spec(tmp_path):
    stage = ModelStage(uri="s3://bucket/models")
    spec, held = boosting_spec(
        "xgboost",
        "s3://bucket/train/",
        FEATURES,
        LABEL,
        {"query": "select * from EVAL"},
        {"max_depth": 6},
        20,
        "reg:squarederror",
        {"num_workers": 2, "num_cpu_per_worker": 1},
        {"max_failures": 1},
        stage,
        5,
        "prefect-run-abc",
    )
    assert held == {}
    assert spec == TrainingSpec(
        framework="xgboost",
        request_id="prefect-run-abc",
        artifact_stage_location="s3://bucket/models",
        train_data=DataSpec(path="s3://bucket/train/"),
        eval_data=DataSpec(query="select * from EVAL"),
        input_cols=tuple(FEATURES),
        label_col=LABEL,
        n_estimators=20,
        objective="reg:squarederror",
        params={"max_depth": 6},
        verbose_eval=5,
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        failure_config={"max_failures": 1},
    )
    # A DataConnector stays in process; the spec names what it can
    connector = DataConnector.from_parquet(write_regression(tmp_path / "t.parquet"))
    args = (FEATURES, LABEL, None, None, 3, "regression", None, None, ModelStage(), 10, "r")
    spec, held = boosting_spec("lightgbm", connector, *args)
    assert spec.train_data is None and held == {"train": connector}
    with pytest.raises(ConfigError, match="no training data: give a Parquet path"):
        boosting_spec("lightgbm", None, *args)


def test_pytorch_task_arguments_become_a_training_spec():
    def local_func():
        pass

    nested = {"num_nodes": 1, "resource_requirements_per_worker": {"num_cpus": 2}}
    spec, held = pytorch_spec(
        local_func, {"train": {"table": "T"}}, {"lr": 0.1}, nested, None, ModelStage(), "r1"
    )
    assert spec.train_func is None and held == {}  # the callable joins in process
    assert spec.dataset_map == {"train": DataSpec(table="T")} and spec.scaling_config == nested
    by_path, _ = pytorch_spec("pkg.mod:train", None, None, None, None, ModelStage(), "r1")
    assert by_path.train_func == "pkg.mod:train"
    with pytest.raises(ConfigError, match=r"resource_requirements_per_worker'\] has unknown"):
        pytorch_spec(local_func, None, None, {"resource_requirements_per_worker": {"gpus": 1}},
                     None, ModelStage(), "r1")  # fmt: skip


# -- Snowpark sessions from SnowflakeCredentials ---------------------------------------------


@pytest.fixture(scope="module")
def key_pair():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"key-passphrase-9931"),
    )
    return {"key": key, "der": der, "pem": pem, "encrypted": encrypted}


def signed_jwt_subject(configs, key) -> str:
    """Sign in as the Snowflake connector does with ``private_key`` (its key-pair
    authenticator, no network) and verify the token with the public key."""
    from snowflake.connector.auth import AuthByKeyPair

    token = AuthByKeyPair(private_key=configs["private_key"]).prepare(
        account=configs["account"], user=configs["user"]
    )
    claims = jwt.decode(
        token, key.public_key(), algorithms=["RS256"], options={"verify_aud": False}
    )
    return claims["sub"]


def test_key_pair_credentials_give_a_working_session_config(key_pair, tmp_path):
    creds = SnowflakeCredentials(
        account="acme-xy12345", user="svc_trainer", private_key=key_pair["pem"], role="TRAINER"
    )
    configs = snowpark_configs(creds)
    assert configs == {
        "account": "acme-xy12345",
        "user": "svc_trainer",
        "role": "TRAINER",
        "private_key": key_pair["der"],
    }
    assert signed_jwt_subject(configs, key_pair["key"]) == "ACME-XY12345.SVC_TRAINER"
    # an encrypted key file with its passphrase: the same key, decrypted
    path = tmp_path / "rsa_key.p8"
    path.write_bytes(key_pair["encrypted"])
    from_file = SnowflakeCredentials(
        account="acme-xy12345",
        user="svc_trainer",
        private_key_path=path,
        private_key_passphrase="key-passphrase-9931",
        authenticator="snowflake_jwt",
    )
    assert snowpark_configs(from_file) == {
        "account": "acme-xy12345",
        "user": "svc_trainer",
        "authenticator": "snowflake_jwt",
        "private_key": key_pair["der"],
    }
    # Snowpark's builder accepts these parameters (on its local emulation: no account here)
    before = open_sessions()
    session = open_snowpark_session(from_file, local_testing=True)
    try:
        assert session.create_dataframe([[1]], schema=["X"]).count() == 1
    finally:
        close_session(session)
    assert open_sessions() == before


@pytest.mark.parametrize(
    "fields,expected",
    [
        (
            {"user": "u", "password": "pw-1"},
            {"user": "u", "password": "pw-1"},
        ),
        (
            {"user": "u", "authenticator": "oauth", "token": "tok-1"},
            {"user": "u", "authenticator": "oauth", "token": "tok-1"},
        ),
        (
            {
                "user": "u",
                "password": "pw-2",
                "authenticator": "okta_endpoint",
                "endpoint": "https://acme.okta.com",
            },
            {"user": "u", "password": "pw-2", "authenticator": "https://acme.okta.com"},
        ),
        (
            {"user": "u", "authenticator": "externalbrowser"},
            {"user": "u", "authenticator": "externalbrowser"},
        ),
        (
            {"authenticator": "workload_identity", "workload_identity_provider": "aws"},
            {"authenticator": "workload_identity", "workload_identity_provider": "aws"},
        ),
    ],
    ids=["password", "oauth", "okta", "browser", "workload-identity"],
)
def test_every_auth_method_reaches_snowpark(fields, expected):
    creds = SnowflakeCredentials(account="acme", **fields)
    configs = snowpark_configs(creds)
    assert configs == {"account": "acme", **expected}
    session = session_from_configs({**configs, "local_testing": True})
    close_session(session)


def test_a_connector_block_adds_warehouse_database_and_schema():
    connector = SnowflakeConnector(
        credentials=SnowflakeCredentials(account="acme", user="u", password="pw"),
        database="ML",
        warehouse="TRAIN_WH",
        schema="PUBLIC",
    )
    assert snowpark_configs(connector) == {
        "account": "acme",
        "user": "u",
        "password": "pw",
        "database": "ML",
        "warehouse": "TRAIN_WH",
        "schema": "PUBLIC",
    }


def test_model_stage_session_config_and_closing(key_pair):
    stage = ModelStage(
        uri="@ML.PUBLIC.MODELS",
        snowflake_credentials=SnowflakeCredentials(
            account="acme", user="svc", private_key=key_pair["pem"]
        ),
        local_testing=True,
    )
    assert stage.needs_session and stage.has_snowflake
    assert stage.snowpark_configs() == {
        "account": "acme",
        "user": "svc",
        "private_key": key_pair["der"],
        "local_testing": True,
    }
    before = open_sessions()
    with pytest.raises(RuntimeError, match="boom"):
        with stage.open_session() as session:
            assert session.create_dataframe([[1]], schema=["X"]).count() == 1
            raise RuntimeError("boom")
    assert session._conn.is_closed() and open_sessions() == before
    plain = ModelStage(uri="s3://bucket/models")
    assert not plain.needs_session and plain.session() is None
    assert plain.snowpark_configs() is None
    with plain.open_session() as nothing:
        assert nothing is None

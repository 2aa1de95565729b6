"""The provider info as Airflow 3.3 reads it: the ``ray`` connection's form (conn-fields,
ui-field-behaviour, hook name) through Airflow's own ProvidersManager, without the
deprecated ``get_ui_field_behaviour`` on the hook."""

from __future__ import annotations

from shardtrain_airflow import get_provider_info
from shardtrain_airflow.hooks.ray import RayHook


def _ray_connection() -> dict:
    (ray,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == "ray"]
    return ray


def test_the_providers_manager_reads_the_ray_connection_form():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    declared = _ray_connection()
    assert "airflow-provider-shardtrain" in manager.providers
    hook = manager.hooks["ray"]
    assert (hook.hook_name, hook.hook_class_name) == ("Ray", declared["hook-class-name"])

    behaviour = manager.field_behaviours["ray"]  # what `airflow providers behaviours` lists
    expected = declared["ui-field-behaviour"]
    assert behaviour["hidden_fields"] == expected["hidden-fields"]
    assert behaviour["relabeling"] == expected["relabeling"]
    assert set(behaviour["placeholders"]) == set(expected["placeholders"])

    widgets = manager.connection_form_widgets
    for name, field in declared["conn-fields"].items():
        widget = widgets[f"extra__ray__{name}"]
        assert widget.hook_class_name == declared["hook-class-name"]
        assert widget.field["schema"]["title"] == field["label"]


def test_the_hook_has_no_deprecated_form_methods():
    own = {
        name
        for klass in RayHook.__mro__
        if klass.__module__.startswith("shardtrain")
        for name in vars(klass)
    }
    assert not own & {"get_ui_field_behaviour", "get_connection_form_widgets"}
    assert RayHook.hook_name == _ray_connection()["hook-name"]


def test_the_docs_url_is_not_a_package_index_page():
    (integration,) = get_provider_info()["integrations"]
    assert "pypi.org" not in integration["external-doc-url"]

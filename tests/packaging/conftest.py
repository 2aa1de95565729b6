"""Packaging checks: metadata read from the pyprojects and the installed distributions,
Airflow's providers manager reading the provider info. The slow part (each distribution
installed alone into a fresh environment) is check_fresh_installs.sh, run by hand."""

from __future__ import annotations

import os

from tests.helpers import temp_folder

# Airflow writes its config under AIRFLOW_HOME when first imported: keep it out of ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = temp_folder("airflow-home-")

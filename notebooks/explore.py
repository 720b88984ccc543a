# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Explore finished study outputs
#
# Pick a study, a configuration (a folder `outputs/<study>/<config>/` holding `results.csv`), an
# attack, the arm (checkpoint threshold, defense, norm and radius, budget, resolution: whatever
# the configuration varies), a private class and a seed. For that run you see
#
# 1. the private training images of the class above the run's reconstructions of that class,
# 2. the run's row of `results.csv`,
# 3. where the run lies among every run of the configuration (Acc@1 and delta_eval per arm, one
#    colour per attack, the selected run starred).
#
# **Run:** open this notebook in JupyterLab and run all cells. Headless (papermill, `mibench report`)
# there are no widgets: it shows one default run of each configuration instead (first attack,
# class and seed).

# %%
from mibench_lib.studies.explore import explore

# %% tags=["parameters"]
out_root = ""  # folder holding <study>/<config>/; empty: the repository's outputs/
study = ""  # only this study (headless) or preselect it (widgets); empty: every study
config = ""  # only this configuration, or preselect it; empty: every configuration
max_configs = 12  # headless: at most this many configurations on the static pages
mode = "auto"  # "auto": widgets in JupyterLab, static pages headless; "widgets" or "static"

# %%
explorer = explore(out_root, study=study, config=config, max_configs=max_configs, mode=mode)

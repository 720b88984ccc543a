"""Package list for setuptools; every other setting is in pyproject.toml.

The library is found as usual; the study notebooks (``notebooks/``) and parameter files
(``parameters/``) are added as the data packages ``mibench_lib._study.notebooks`` and
``mibench_lib._study.parameters`` so that an installed ``mibench`` finds them without a clone.
"""

from setuptools import find_packages, setup

STUDY_FILES = {
    "mibench_lib._study.notebooks": "notebooks",
    "mibench_lib._study.parameters": "parameters",
}

setup(
    packages=[*find_packages(include=["mibench_lib", "mibench_lib.*"]), *STUDY_FILES],
    package_dir=STUDY_FILES,
)

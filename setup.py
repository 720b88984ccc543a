"""Package list for setuptools; every other setting is in pyproject.toml.

The library is found as usual; the study notebooks (``notebooks/``) and parameter files
(``parameters/<study>/``) are added as the data packages ``mibench_lib._study.notebooks`` and
``mibench_lib._study.parameters.<study>`` so that an installed ``mibench`` finds them without a
clone (each folder is listed, as setuptools asks of data-only packages).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
STUDY_FILES = {
    "mibench_lib._study.notebooks": "notebooks",
    "mibench_lib._study.parameters": "parameters",
}
STUDY_FILES.update(
    {
        f"mibench_lib._study.parameters.{folder.name}": f"parameters/{folder.name}"
        for folder in sorted((HERE / "parameters").iterdir())
        if folder.is_dir() and not folder.name.startswith((".", "_"))
    }
)
DATA = {name: ["*.ipynb"] if name.endswith("notebooks") else ["*.yaml"] for name in STUDY_FILES}

setup(
    packages=[*find_packages(include=["mibench_lib", "mibench_lib.*"]), *STUDY_FILES],
    package_dir=STUDY_FILES,
    package_data=DATA,
)

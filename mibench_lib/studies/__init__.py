"""Study notebooks: validated parameters, the papermill runner, result records and the CLI.

- :mod:`~mibench_lib.studies.params`: read ``parameters/<study>/<config>.yaml`` and check it against
  the notebook's ``parameters`` cell.
- :mod:`~mibench_lib.studies.runner`: :func:`run_config` and :func:`run_all` execute notebooks into
  ``outputs/<study>/<config>/`` and skip runs that are already complete.
- :mod:`~mibench_lib.studies.records`: helpers the notebooks call to write results, figures and
  tables.
- :mod:`~mibench_lib.studies.cli`: the ``mibench`` command (also ``python -m mibench_lib.studies``).

Names are imported on first use, so a notebook importing the record helpers does not pay for
papermill.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mibench_lib.studies.params import (
        ParameterError,
        load_parameters,
        notebook_parameters,
        validate_parameters,
    )
    from mibench_lib.studies.records import (
        append_rows,
        completed_keys,
        mean_std_table,
        save_figure,
        save_table,
    )
    from mibench_lib.studies.runner import (
        ConfigResult,
        RunFailedError,
        list_configs,
        list_studies,
        run_all,
        run_config,
    )

_LAZY: dict[str, str] = {
    "ParameterError": "params",
    "load_parameters": "params",
    "notebook_parameters": "params",
    "validate_parameters": "params",
    "append_rows": "records",
    "completed_keys": "records",
    "mean_std_table": "records",
    "save_figure": "records",
    "save_table": "records",
    "ConfigResult": "runner",
    "RunFailedError": "runner",
    "list_configs": "runner",
    "list_studies": "runner",
    "run_all": "runner",
    "run_config": "runner",
}

__all__ = [
    "ConfigResult",
    "ParameterError",
    "RunFailedError",
    "append_rows",
    "completed_keys",
    "list_configs",
    "list_studies",
    "load_parameters",
    "mean_std_table",
    "notebook_parameters",
    "run_all",
    "run_config",
    "save_figure",
    "save_table",
    "validate_parameters",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mibench_lib.studies' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mibench_lib.studies.{module}"), name)

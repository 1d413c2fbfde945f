"""Every default path, decided in one place: a workspace root and its four folders.

The root is ``--workdir``, else the ``HAR_VIT_HOME`` environment variable, else the
current directory. Paths a user types (``--out``, ``--in``, ``--run``) are taken as
given; only what the user did not name goes under the root::

    <root>/runs/<run id>/   one folder per run: ingest/ windows/ model/ (and reports/ with run --out)
    <root>/models/          the registry: stored runs and the production pointer
    <root>/reports/         one folder per report, and index.html
    <root>/data/            downloads and extracted datasets

>>> ws = Workspace.at("/srv/har", env={})
>>> ws.runs, ws.models, ws.reports, ws.data
(PosixPath('/srv/har/runs'), PosixPath('/srv/har/models'), PosixPath('/srv/har/reports'), PosixPath('/srv/har/data'))
>>> Workspace.at(None, env={"HAR_VIT_HOME": "/tmp/h"}).root
PosixPath('/tmp/h')
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

ENV = "HAR_VIT_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, workdir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> "Workspace":
        """The workspace of ``--workdir``, else ``$HAR_VIT_HOME``, else the current directory (made absolute)."""
        env = os.environ if env is None else env
        root = workdir or env.get(ENV) or os.getcwd()
        return cls(Path(os.path.abspath(os.path.expanduser(str(root)))))

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def fill(self, values: Mapping[str, Any], command: str = "") -> dict[str, Any]:
        """``values`` with the unset path options pointed into the workspace.

        ``run --out D`` keeps the whole run, its report included, under D.
        """
        v = dict(values)
        if "data_dir" in v and not v["data_dir"]:
            v["data_dir"] = str(self.data)
        if "registry" in v and not v["registry"]:
            v["registry"] = str(self.models)
        if "reports_dir" in v and not v["reports_dir"]:
            v["reports_dir"] = str(Path(v["out"]) / "reports" if command == "run" and v.get("out") else self.reports)
        return v

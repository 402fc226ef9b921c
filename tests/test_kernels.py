"""The runner's notebook kernels talk over ZeroMQ ipc, not TCP: no port, and no "running over TCP without
encryption" warning in the logs of every notebook."""

import tempfile
from pathlib import Path

import nbformat
import papermill
from nbformat.v4 import new_code_cell, new_notebook

from addmlib import pipeline

WARNING = "Kernel is running over TCP without encryption"


def _tiny_notebook(path: Path) -> Path:
    nb = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                             new_code_cell("import os\nprint(x * 2, os.getcwd())")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_the_runner_starts_ipc_kernels_without_the_tcp_warning(tmp_path, capfd, monkeypatch):
    notebook = _tiny_notebook(tmp_path / "tiny.ipynb")
    # the control: a plain papermill kernel (TCP) prints the warning, so its absence below means something
    papermill.execute_notebook(str(notebook), str(tmp_path / "tcp.ipynb"), parameters={"x": 1},
                               kernel_name="python3", progress_bar=False)
    assert WARNING in "".join(capfd.readouterr())

    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real_mkdtemp(*a, **k)) or made[-1])
    pipeline.execute_notebook(notebook, tmp_path / "out.ipynb", {"x": 21}, cell_timeout=120)
    out, err = capfd.readouterr()
    assert WARNING not in out + err
    printed = nbformat.read(tmp_path / "out.ipynb", 4).cells[-1].outputs[0]["text"]
    assert printed.split() == ["42", str(tmp_path)], "parameters injected, run in the notebook's folder"
    sockets = [d for d in made if Path(d).name.startswith("addm-kernel-")]
    assert len(sockets) == 1 and not Path(sockets[0]).exists(), "its socket folder is removed with the kernel"

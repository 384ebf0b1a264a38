"""Every docstring example in the package runs and prints what it shows.

Examples that need files on disk (a dataset, a trained model) are marked ``+SKIP``; the
rest run here, so an example that goes stale fails the suite.
"""

import doctest
import importlib
import pkgutil

import pytest

import volseg

MODULES = sorted(m.name for m in pkgutil.walk_packages(volseg.__path__, "volseg.") if m.name != "volseg.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes, writes here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in finder.find(module, name, globs=dict(vars(module))):
        result = runner.run(test, out=report.append)
        assert result.failed == 0, "".join(report)

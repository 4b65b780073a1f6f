"""The pre-release check (docs/releasing.md): the test suite on the oldest and the newest
Python that pyproject.toml declares, without the optional extras and with them all."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]

#: The oldest and the newest of pyproject.toml's Python classifiers.
PYTHONS = ["3.11", "3.13"]
#: What each variant installs: "minimal" leaves out torch and faiss (their tests and
#: doctests skip), "all" is every extra but the GPU ones.
EXTRAS = {"minimal": ".[test]", "all": ".[all]"}


@nox.session(python=PYTHONS)
@nox.parametrize("extras", list(EXTRAS))
def tests(session: nox.Session, extras: str) -> None:
    """The suite; arguments after ``--`` go to pytest (``nox -s tests -- -x``)."""
    session.install(EXTRAS[extras])
    if extras == "minimal":  # nothing pulled torch or faiss in
        session.run("python", "-c", "import importlib.util as u, sys; sys.exit(' '.join("
                    "m + ' is installed' for m in ('torch', 'faiss') if u.find_spec(m)) or None)")
    session.run("python", "-m", "pytest", "-q", *session.posargs)

"""Where the command lines look for their configuration file, in one documented order.

A command that takes ``--config`` uses the first of:

1. ``--config PATH`` (given: it must exist);
2. the environment variable (``MEDFL_COORDINATOR_CONFIG`` or ``MEDFL_AGENT_CONFIG``; set: it must exist);
3. the file in the current folder (``./coordinator.toml``, ``./agent.toml``);
4. the well-known system paths (``/etc/medfl/coordinator.toml``, ``/etc/medfl/agent.toml``), then
   the Debian packages' (``/etc/medfl/coordinator/coordinator.toml``, ``/etc/medfl/agent/agent.toml``).

When none is found, :class:`~medfl.errors.ConfigNotFound` names every place tried and how to
point at the file. An explicit ``--config`` or variable that names a missing file is an error
too: it never falls through to the next place, so a typo cannot pick up another file silently.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from medfl import envvars
from medfl.errors import ConfigNotFound

__all__ = ["AGENT", "COORDINATOR", "SYSTEM_DIR", "ConfigSearch"]

#: the well-known folder searched last
SYSTEM_DIR = pathlib.Path("/etc/medfl")


@dataclass(frozen=True)
class ConfigSearch:
    """How one program finds its configuration file.

    Parameters
    ----------
    filename : str
        The file's name (``coordinator.toml``).
    variable : str
        The registered ``MEDFL_`` environment variable that may name it.
    program : str
        The command line, for the messages (``medfl-coordinator``).
    """

    filename: str
    variable: str
    program: str

    @property
    def system_path(self) -> pathlib.Path:
        """The well-known path."""
        return SYSTEM_DIR / self.filename

    @property
    def package_path(self) -> pathlib.Path:
        """Where the Debian package keeps the file (with its keys beside it), tried last."""
        return SYSTEM_DIR / self.filename.removesuffix(".toml") / self.filename

    def help(self) -> str:
        """The ``--config`` help text: the search order."""
        return (f"{self.filename} to use (default: ${self.variable}, else ./{self.filename}, "
                f"else {self.system_path}, else {self.package_path})")

    def find(self, given: str | pathlib.Path | None) -> pathlib.Path:
        """The configuration file to read.

        Parameters
        ----------
        given : str or Path, optional
            The ``--config`` value, None when the flag was not given.

        Raises
        ------
        ConfigNotFound
            The flag or the variable names a missing file, or no place holds one.
        """
        fix = (f"point at the file with --config PATH or 'export {self.variable}=PATH', or run "
               f"'{self.program} init' to create one")
        if given is not None:
            path = pathlib.Path(given)
            if not path.is_file():
                raise ConfigNotFound(f"--config {path}: {_why(path)}; {fix}")
            return path
        value = envvars.get(self.variable)
        if value is not None:
            path = pathlib.Path(value)
            if not path.is_file():
                raise ConfigNotFound(f"{self.variable}={value}: {_why(path)}; unset it or {fix}")
            return path
        here = pathlib.Path(self.filename)
        for path in (here, self.system_path, self.package_path):
            if path.is_file():
                return path
        tried = ["  1. --config PATH: not given",
                 f"  2. ${self.variable}: not set",
                 f"  3. ./{self.filename}: {_why(here)}",
                 f"  4. {self.system_path}: {_why(self.system_path)}",
                 f"  5. {self.package_path}: {_why(self.package_path)}"]
        raise ConfigNotFound(f"no {self.filename} found; looked at, in order:\n" + "\n".join(tried) + f"\n{fix}")


def _why(path: pathlib.Path) -> str:
    """Why ``path`` is not a readable configuration file."""
    if path.is_dir():
        return f"{path} is a folder, not a file"
    return "no such file" if path.is_absolute() else f"no such file ({path.absolute()})"


#: ``medfl-coordinator``'s coordinator.toml
COORDINATOR = ConfigSearch(filename="coordinator.toml", variable="MEDFL_COORDINATOR_CONFIG",
                           program="medfl-coordinator")
#: ``medfl-agent``'s agent.toml
AGENT = ConfigSearch(filename="agent.toml", variable="MEDFL_AGENT_CONFIG", program="medfl-agent")

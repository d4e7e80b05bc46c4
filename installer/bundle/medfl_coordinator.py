"""Entry point of the bundled ``medfl-coordinator`` (PyInstaller runs this file)."""

from coordinator.cli import main

main()

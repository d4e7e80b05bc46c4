"""Entry point of the bundled ``medfl-agent`` (PyInstaller runs this file)."""

from agent.cli import main

main()

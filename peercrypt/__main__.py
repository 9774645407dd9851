from peercrypt.cli import run

run()

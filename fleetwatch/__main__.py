from fleetwatch.cli import app

app()

from vertseg.cli.main import app

app()

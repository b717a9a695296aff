"""The Typer app: one file per command; each parses, calls one library function and prints a summary."""

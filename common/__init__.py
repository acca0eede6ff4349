"""The project's ground floor: errors and the CLI convention, typed YAML, paths. Imports nothing of the project."""

# The config tree. Installed as the package ``segbench.conf`` (see pyproject.toml), so that an
# installed segbench finds its YAML wherever it runs; this file makes the folder a package.

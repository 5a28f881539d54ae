"""The gateway-side package of the MLflow AI Gateway kit (see README.md)."""

__version__ = "0.1.0"  # the only place: pyproject.toml reads it; reported as gateway_build_info{version}

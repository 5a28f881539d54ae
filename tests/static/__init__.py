"""Tests of the repository's files with the tools that read them (linters, nginx -t, helm, pip); no stack."""

"""A deterministic synthetic website, served on loopback (see :mod:`.pages`)."""

from __future__ import annotations

from .pages import SiteProcess, SyntheticSite, demo_port_to_resume, main, make_app, serve, serve_in_subprocess

__all__ = [
    "SyntheticSite",
    "SiteProcess",
    "make_app",
    "serve",
    "serve_in_subprocess",
    "demo_port_to_resume",
    "main",
]

"""The fluxcore service (installed as fluxcore.server). Not built yet: see issue 3."""

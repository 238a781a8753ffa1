"""The tunnel: a self-hosted edge on a public host and a connector in ``homeplane run``
that dials out to it, so the home network opens no port (cloudflared's role)."""

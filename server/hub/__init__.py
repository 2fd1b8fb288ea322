"""The real-time hub: WebSocket connections, job watches and the events they carry."""
